"""Checkpoint faults through the API: damaged files, non-finite state, model mismatches, and a
resume whose learning-rate schedule is mid-decay."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from capsjax.infra.checkpoint import CheckpointError, Checkpointer, MANIFEST, NonFiniteError
from capsjax.train import loop, model_state, steps
from capsjax.train.config import TrainConfig
from conftest import tiny_capsnet

TINY = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
            decoder_hidden=[32, 64])


def _state(seed=0):
  model = tiny_capsnet(seed)
  return nnx.split((model, nnx.Optimizer(model, steps.make_optimizer(1e-3, 0.9, 10),
                                         wrt=nnx.Param)))[1]


def _saved(tmp_path, steps_=(1, 2)):
  ckpt = Checkpointer(tmp_path)
  for s in steps_:
    ckpt.save(s, _state(), {"model": {}})
  ckpt.close()
  return tmp_path / "checkpoints"


def _largest_file(directory):
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_overwritten_bytes_are_caught_by_checksum(tmp_path):
  # Orbax alone restores such a file without complaint, as wrong numbers.
  victim = _largest_file(_saved(tmp_path) / "2")
  with open(victim, "r+b") as f:
    f.seek(victim.stat().st_size // 2)
    f.write(b"\x00garbage\xff" * 8)
  ckpt = Checkpointer(tmp_path)
  with pytest.raises(CheckpointError, match=r"checkpoint 2 in .* cannot be restored: file "
                     r"state/.* does not match its checksum \(corrupted\)\."):
    ckpt.restore(_state(1))
  restored, meta = ckpt.restore(_state(1), 1)  # the previous checkpoint is intact
  assert meta["step"] == 1


@pytest.mark.parametrize("damage, message", [
    ("missing file", "file state/.* is missing"),
    ("bad manifest", f"its {MANIFEST} is unreadable"),
    ("bad metadata", "file meta/metadata has"),
])
def test_damaged_checkpoint_errors_name_it(damage, message, tmp_path):
  step_dir = _saved(tmp_path, (2,)) / "2"
  if damage == "missing file":
    _largest_file(step_dir).unlink()
  elif damage == "bad manifest":
    (step_dir / MANIFEST).write_text("{not json")
  else:
    (step_dir / "meta" / "metadata").write_text("{truncated")
  with pytest.raises(CheckpointError, match=f"checkpoint 2 in .* cannot be restored: {message}"):
    Checkpointer(tmp_path).read_meta()


def test_fallback_moves_damaged_checkpoints_aside(tmp_path):
  directory = _saved(tmp_path, (1, 2, 3))
  os.truncate(_largest_file(directory / "3"), 10)
  shutil.rmtree(directory / "2" / "state")
  reports = []
  ckpt = Checkpointer(tmp_path)
  _, meta = ckpt.restore_newest_good(_state(1), lambda meta: None, reports.append)
  assert meta["step"] == 1 and ckpt.all_steps() == [1]
  assert [r.split(" cannot")[0] for r in reports] == [
      f"Warning: checkpoint {s} in {str(directory)!r}" for s in (3, 2)]
  assert sorted(p.name[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()) == ["2", "3"]


def test_save_refuses_non_finite_state(tmp_path):
  state = _state()
  pure = nnx.to_pure_dict(state)
  pure[0]["conv1"]["kernel"] = pure[0]["conv1"]["kernel"].at[0, 0, 0, 0].set(np.inf)
  nnx.replace_by_pure_dict(state, pure)
  ckpt = Checkpointer(tmp_path)
  with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint 5: non-finite values "
                     r"in \[0\]\['conv1'\]\['kernel'\]"):
    ckpt.save(5, state, {})
  assert ckpt.all_steps() == [] and not list((tmp_path / "checkpoints").iterdir())


def test_model_mismatches_name_each_setting_and_default_missing_ones():
  now = {"input_shape": [28, 28, 1], "num_classes": 3, "routing_iters": 3, "digit_dim": 16,
         "primary_dim": 4}
  saved = {"input_shape": [28, 28, 1], "num_classes": 10, "routing_iters": 3, "primary_dim": 8}
  # digit_dim is absent from the saved settings: it meant the default, 16, so it matches.
  assert model_state.model_mismatches(saved, now) == [
      "num_classes: checkpoint 10 vs now 3", "primary_dim: checkpoint 8 vs now 4"]
  assert model_state.model_mismatches(saved, saved) == []
  # A TrainConfig field with a default factory (here `model`) also defaults when missing.
  assert model_state.model_mismatches({**saved, "model": {}}, saved) == []
  with pytest.raises(ValueError, match=r"different model \(num_classes: checkpoint 10 vs now 3; "
                     r"primary_dim: checkpoint 8 vs now 4\)"):
    model_state.check_resumable(saved, now, "w")


def test_routing_rule_and_options_are_model_settings():
  base = {"input_shape": [28, 28, 1], "num_classes": 10, "routing_iters": 3}
  # A checkpoint from before the routing kit recorded neither: it meant dynamic, no options.
  assert model_state.model_mismatches(base, {**base, "routing": "dynamic", "routing_options": {}}) == []
  assert model_state.model_mismatches(base, {**base, "routing": "uniform"}) == [
      "routing: checkpoint 'dynamic' vs now 'uniform'"]
  assert model_state.model_mismatches({**base, "routing_options": {"leaky": True}}, base) == [
      "routing_options: checkpoint {'leaky': True} vs now {}"]
  # Nor did it record the network, which was CapsNet; a baseline is a different model.
  assert model_state.model_mismatches(base, {**base, "arch": "capsnet"}) == []
  assert model_state.model_mismatches(base, {**base, "arch": "baseline"}) == [
      "arch: checkpoint 'capsnet' vs now 'baseline'"]


def test_unknown_model_setting_is_rejected():
  with pytest.raises(ValueError, match="unknown model setting 'capsule_size'; expected one of"):
    TrainConfig(max_steps=1, model={"capsule_size": 8}).validate()


def _config(**overrides):
  # The learning rate halves every 2 steps, so a resume that restarted the schedule would differ.
  base = dict(batch_size=8, max_steps=6, learning_rate=1e-3, decay_rate=0.5, decay_steps=2,
              checkpoint_every=2, log_every=1, eval_batch_size=16, model=TINY)
  return TrainConfig(**{**base, **overrides})


def _final(workdir):
  _, state, meta = model_state.load_for_eval(workdir, with_optimizer=True)
  return meta["step"], jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def test_api_resume_mid_schedule_is_bit_exact(tmp_path, data_dir):
  kw = dict(data_dir=data_dir, train_limit=32, test_limit=16, progress=False)
  loop.train(_config(), tmp_path / "whole", **kw)
  loop.train(_config(max_steps=3), tmp_path / "split", **kw)
  loop.train(_config(), tmp_path / "split", **kw)
  (step_a, a), (step_b, b) = _final(tmp_path / "whole"), _final(tmp_path / "split")
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, a, b)
  rates = [[r["learning_rate"] for r in map(json.loads, (tmp_path / w / "metrics.jsonl")
                                            .read_text().splitlines()) if r["split"] == "train"]
           for w in ("whole", "split")]
  assert rates[0] == rates[1]
  np.testing.assert_allclose(rates[0], [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4], rtol=1e-6)
  # The model settings are stored beside the checkpoints and in them.
  stored = json.loads((tmp_path / "split" / "config.json").read_text())
  assert stored["model"]["digit_dim"] == 6 and stored["config"]["decay_steps"] == 2
  assert Checkpointer(tmp_path / "split").read_meta()["model"] == stored["model"]
