"""What evaluation restores: the model alone, from checkpoints of older or newer versions, and
while a training run deletes old checkpoints; which settings block a resume."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from capsjax import cli
from capsjax.infra.checkpoint import Checkpointer, MANIFEST, _manifest
from capsjax.train import loop, model_state
from capsjax.train.config import TrainConfig

TINY = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
            decoder_hidden=[32, 64])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """A workdir with checkpoints 2 and 4 of the tiny CapsNet."""
  workdir = tmp_path_factory.mktemp("trained")
  config = TrainConfig(batch_size=8, max_steps=4, checkpoint_every=2, eval_batch_size=16,
                       model=TINY)
  loop.train(config, workdir, data_dir, train_limit=32, test_limit=16, progress=False)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of `trained` that a test may change."""
  return shutil.copytree(trained, tmp_path / "run")


def test_eval_restores_the_model_without_the_optimizer_state(trained):
  _, model_only, meta = model_state.load_for_eval(trained)
  _, full_state, full_meta = model_state.load_for_eval(trained, with_optimizer=True)
  assert meta["step"] == full_meta["step"] == 4
  model_leaves = jax.tree.leaves(nnx.to_pure_dict(model_only))
  full_model_leaves = jax.tree.leaves(nnx.to_pure_dict(full_state)[0])
  assert len(model_leaves) == len(full_model_leaves) > 5
  for a, b in zip(model_leaves, full_model_leaves):
    np.testing.assert_array_equal(a, b)
  optimizer_size = sum(x.size for x in jax.tree.leaves(nnx.to_pure_dict(full_state)[1]))
  model_size = sum(x.size for x in model_leaves)
  assert optimizer_size > 2 * model_size - 10  # Adam's two moments: what eval no longer holds


def _edit_config(workdir, step: int, edit) -> None:
  """Rewrites the config stored in checkpoint `step`, as another version would have written it
  (its file manifest rewritten to match)."""
  step_dir = workdir / "checkpoints" / str(step)
  meta_file = step_dir / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  edit(meta["config"])
  meta_file.write_text(json.dumps(meta))
  (step_dir / MANIFEST).write_text(json.dumps(_manifest(step_dir)))


def test_config_with_unknown_and_missing_fields_loads_with_a_note(workdir):
  def edit(config):
    config["old_name_of_a_field"] = 3  # renamed or removed since
    del config["eval_every"]  # added since: takes its default
    del config["plugins"]  # older runs recorded none

  _edit_config(workdir, 4, edit)
  notes = []
  _, _, meta = model_state.load_for_eval(workdir, report=notes.append)
  assert meta["step"] == 4
  assert notes == ["Note: the checkpoint's config has field(s) this version does not know, "
                   "ignored: old_name_of_a_field."]
  config = model_state.config_from_saved(meta["config"], notes.append)
  assert config.eval_every == 0 and config.plugins == []


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", "8", "the checkpoint's config field batch_size is '8'; this version expects "
                        "an int."),
    ("learning_rate", True, "the checkpoint's config field learning_rate is True; this version "
                            "expects a float."),
    ("routing", "no_such_rule", "the checkpoint's config cannot be used: unknown routing rule "
                                "'no_such_rule'; available: "),
    ("plugins", "my_rules", "the checkpoint's config field plugins is 'my_rules'; this version "
                            "expects a value of type list."),
    ("plugins", ["capsjax_no_such_plugin"], "the checkpoint's config cannot be used: routing "
                                            "plugin module 'capsjax_no_such_plugin' not found"),
])
def test_config_that_cannot_be_used_fails_naming_the_field(workdir, field, value, message,
                                                           data_dir, capsys):
  _edit_config(workdir, 4, lambda config: config.update({field: value}))
  code = cli.main(["eval", "--workdir", str(workdir), "--data-dir", data_dir, "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith(f"capsjax: error: {message}")


def test_eval_falls_back_when_training_deletes_the_newest_checkpoint(workdir, monkeypatch):
  read_meta = Checkpointer.read_meta
  deleted = []

  def read_meta_then_lose_it(self, step=None):
    meta = read_meta(self, step)
    if not deleted:  # a training run's max_to_keep removes it right after we chose it
      shutil.rmtree(self.directory / str(meta["step"]))
      deleted.append(meta["step"])
    return meta

  monkeypatch.setattr(Checkpointer, "read_meta", read_meta_then_lose_it)
  _, _, meta = model_state.load_for_eval(workdir)
  assert deleted == [4] and meta["step"] == 2
  monkeypatch.setattr(Checkpointer, "read_meta", read_meta_then_lose_it)
  deleted.clear()
  with pytest.raises(ValueError, match="checkpoint 2 in .* cannot be restored"):
    model_state.load_for_eval(workdir, step=2)  # a step asked for by number is not swapped


@pytest.mark.parametrize("rule, iterative", [("uniform", False), ("self_attention", False),
                                             ("dynamic", True), ("em", True)])
def test_routing_iters_blocks_resume_only_for_iterative_rules(rule, iterative):
  saved = {"routing": rule, "routing_iters": 3}
  now = {"routing": rule, "routing_iters": 1}
  expected = ["routing_iters: checkpoint 3 vs now 1"] if iterative else []
  assert model_state.model_mismatches(saved, now) == expected
  # Another rule is another model, whatever the iterations.
  other = {"routing": "dynamic" if rule != "dynamic" else "uniform", "routing_iters": 1}
  assert len(model_state.model_mismatches(saved, other)) == 2
