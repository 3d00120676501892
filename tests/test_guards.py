"""Guards that keep a run's numbers meaning what they say: bf16 kept with chunked votes, a
non-finite learning rate refused, the step that breaks the parameters named, nothing written
for a run that cannot start, and throughput that excludes checkpoints and evaluation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from capsjax import api, data
from capsjax.infra import checkpoint
from capsjax.nn.layers import DigitCaps
from capsjax.train.archs import capsnet as capsnet_arch
from capsjax.train.config import TrainConfig
from conftest import tiny_capsnet
from real_path import Trainer

TINY = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
            decoder_hidden=[32, 64])


def _digit_caps(dtype, chunk):
  layer = DigitCaps(48, 8, 10, 16, "dynamic", 3, vote_chunk_size=chunk, dtype=dtype,
                    rngs=nnx.Rngs(0))
  layer.W[...] = 100 * layer.W[...]  # capsules of length ~0.6 rather than ~1e-5
  return layer


def test_chunked_votes_keep_bf16():
  """--vote-chunk-size with --precision bf16 computes the votes in bfloat16, as without
  chunking (before: the chunked path dropped the dtype and ran float32)."""
  u = 0.3 * jax.random.normal(jax.random.key(1), (4, 48, 8))
  v = {(dtype, chunk): np.asarray(_digit_caps(dtype, chunk)(u).v)
       for dtype in (None, jnp.bfloat16) for chunk in (None, 16)}
  bf16_gap = np.abs(v[jnp.bfloat16, 16] - v[jnp.bfloat16, None]).max()
  precision_gap = np.abs(v[jnp.bfloat16, 16] - v[None, 16]).max()
  assert precision_gap > 1e-3  # bf16 votes do differ from float32 ones ...
  assert bf16_gap < 0.05 * precision_gap  # ... and chunking keeps them bf16
  np.testing.assert_allclose(v[None, 16], v[None, None], atol=1e-6)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_non_finite_learning_rate_is_refused_before_the_workdir(value, tmp_path, data_dir):
  """NaN, +-Inf and a value that is Inf in float32 are refused by validate(), before the
  workdir exists (before: NaN and Inf passed `<= 0`)."""
  with pytest.raises(ValueError, match="learning_rate must be a finite number"):
    TrainConfig(max_steps=1, learning_rate=value).validate()
  with pytest.raises(ValueError, match="learning_rate"):
    api.fit("quick", tmp_path / "run", data_dir, learning_rate=value, progress=False)
  assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_training_set_leaves_no_workdir(tmp_path, data_dir):
  """Refused from the config and the data before anything is written (before: after the
  workdir and its .lock were created)."""
  with pytest.raises(ValueError, match="batch size 300 is larger than the dataset"):
    api.fit("quick", tmp_path / "run", data_dir, batch_size=300, train_examples=200,
            test_examples=10, progress=False, max_steps=1, model=TINY)
  assert not (tmp_path / "run").exists()


def test_the_step_that_breaks_the_parameters_is_the_one_named():
  """An update that makes the parameters non-finite (here an infinite SGD rate) is caught at
  that step, not applied, and the chunk stops there, though its loss and gradients were finite
  (before: step 1 was applied and step 2 was blamed)."""
  model = tiny_capsnet(0)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(float("inf")),
                                                    wrt=nnx.Param)))
  before = [np.asarray(x) for x in jax.tree.leaves(state)]
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8),
                     rng.integers(0, 10, 16).astype(np.int32), 10)
  state, result = Trainer(graphdef, capsnet_arch.loss_fn(), split, 8, capacity=4)(state, 0, 3)
  assert int(result.bad_step) == 1 and int(result.steps_run) == 0
  assert np.isfinite(result.metrics.loss[0])  # the loss itself was finite
  for x, y in zip(jax.tree.leaves(state), before, strict=True):
    np.testing.assert_array_equal(np.asarray(x), y)


def test_images_per_sec_excludes_checkpoint_time(tmp_path, data_dir, monkeypatch):
  """A checkpoint save that takes 3 s is logged as checkpoint_s and left out of the window's
  images_per_sec (before: 8 images over >= 3 s gave at most 2.7 images/s)."""
  save = checkpoint.Checkpointer.save

  def slow_save(self, step, *args, **kwargs):
    result = save(self, step, *args, **kwargs)
    if step == 2:
      import time
      time.sleep(3.0)
    return result

  monkeypatch.setattr(checkpoint.Checkpointer, "save", slow_save)
  api.fit("quick", tmp_path / "run", data_dir, max_steps=4, batch_size=4, log_every=2,
          checkpoint_every=2, train_examples=64, test_examples=8, progress=False, model=TINY)
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4]
  # The save after step 2 falls in the window of steps 3-4 (the first one also compiles).
  assert train[0]["checkpoint_s"] == 0.0
  assert train[1]["checkpoint_s"] >= 3.0 and train[1]["eval_s"] == 0.0
  assert train[1]["images_per_sec"] > 8 / 3.0


def test_train_examples_is_recorded_and_a_resume_without_it_is_told(tmp_path, data_dir, capsys):
  """--train-examples is recorded with the run (config.json), so a resume that leaves it out
  (and so trains on the whole set) is told the data changed, instead of silently."""
  common = dict(max_steps=2, batch_size=8, log_every=2, checkpoint_every=2, test_examples=8,
                progress=False, model=TINY)
  api.fit("quick", tmp_path / "run", data_dir, train_examples=64, **common)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
  assert saved["train_examples"] == 64
  capsys.readouterr()
  api.fit("quick", tmp_path / "run", data_dir, **{**common, "max_steps": 3})
  out = capsys.readouterr().out
  assert "train_examples: checkpoint 64 vs now None" in out, out
