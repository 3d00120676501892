"""K training steps per dispatch (`steps.make_train_chunk`) and the data sources of
`capsjax.data.pipeline`: same steps as one dispatch each, no host-to-device copy inside a chunk, the
NaN guard inside the compiled loop, and the training loop on both sources."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax import data
from capsjax.core import streams
from capsjax.data import datasets, pipeline
from capsjax.data.augment import shift_transform
from capsjax.infra import hooks
from capsjax.infra.checkpoint import NonFiniteError
from capsjax.train import steps
from capsjax.train.archs import capsnet as capsnet_arch
from capsjax.train.config import TrainConfig
from capsjax.train.loop import train
from conftest import run_cli, tiny_capsnet
from faults import FaultHooks
from real_path import Trainer

BATCH, N = 8, 64
LOSS = capsnet_arch.loss_fn(0.0005)
SHIFTED = datasets.gather(shift_transform(2))  # the loop's MNIST training examples
KEYS = streams.run_keys(0)
TINY_MODEL = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
                  decoder_hidden=[32, 64])


def _state(seed=0):
  model = tiny_capsnet(seed)
  return nnx.split((model, nnx.Optimizer(model, steps.make_optimizer(3e-3, 0.96, 2000),
                                         wrt=nnx.Param)))


def _split(n=N):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 10, (n,), dtype=np.int32)
  images = rng.integers(0, 60, (n, 28, 28, 1), dtype=np.uint8)
  for k, label in enumerate(labels):
    images[k, 2 + 2 * label:4 + 2 * label, 4:24] = 255
  return data.Split(images, labels, 10)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _assert_same(a, b, rtol=0.0, atol=0.0):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_chunk_indices_are_the_per_step_batches():
  rows = pipeline.chunk_indices(N, BATCH, seed=3, first_step=5, num_steps=4, capacity=6)
  assert rows.shape == (6, BATCH) and rows.dtype == np.int32
  for i in range(4):  # crosses the epoch boundary at step 8
    np.testing.assert_array_equal(rows[i], data.batch_indices(N, BATCH, 3, 5 + i))
  assert not rows[4:].any()
  with pytest.raises(ValueError, match="1 to 6 steps, got 7"):
    pipeline.chunk_indices(N, BATCH, 3, 0, 7, 6)


@pytest.mark.parametrize("source_class", [pipeline.DeviceResident, pipeline.HostBatches])
def test_chunk_matches_one_dispatch_per_step(source_class):
  """K steps in one compiled loop = the same K steps dispatched one by one (steps_per_dispatch
  1: same batches and keys); measured: equal to float32 rounding (two compiled programs)."""
  split = _split()
  graphdef, state = _state()
  one_step = Trainer(graphdef, LOSS, split, BATCH, builder=SHIFTED, capacity=1)
  reference, losses = state, []
  for s in range(2, 7):
    reference, r = one_step(reference, s, 1)
    losses.append(float(r.metrics.loss[0]))
  _, state = _state()
  chunk_fn = steps.make_train_chunk(graphdef, LOSS, builder=SHIFTED)
  source = source_class(split, BATCH, seed=0, capacity=8)
  state, result = chunk_fn(state, *source.chunk(2, 5), KEYS)
  assert int(result.steps_run) == 5 and int(result.bad_step) == 0
  np.testing.assert_allclose(result.metrics.loss[:5], losses, rtol=1e-5)
  assert not np.asarray(result.metrics.count[5:]).any()  # rows past num_steps stay empty
  _assert_same(state, reference, rtol=1e-5, atol=1e-6)


def test_device_and_host_sources_give_identical_chunks():
  split = _split()
  graphdef, state = _state()
  chunk_fn = steps.make_train_chunk(graphdef, LOSS, builder=SHIFTED)
  results = []
  for source_class in (pipeline.DeviceResident, pipeline.HostBatches):
    _, state = _state()
    state, result = chunk_fn(state, *source_class(split, BATCH, 0, 4).chunk(6, 4), KEYS)
    results.append((state, result.metrics))
  _assert_same(results[0], results[1])  # exactly: the same program on the same batches


def test_no_host_to_device_copy_inside_a_chunk():
  """The chunk's arguments are device arrays (explicit `device_put` when it is prepared), so it
  runs under `jax.transfer_guard("disallow")`; a host array would have been copied implicitly."""
  split, base_keys = _split(), jax.device_put(KEYS)
  graphdef, state = _state()
  chunk_fn = steps.make_train_chunk(graphdef, LOSS, builder=SHIFTED)
  chunk = pipeline.DeviceResident(split, BATCH, 0, 4).chunk(0, 4)
  with jax.transfer_guard("disallow"):
    state, result = chunk_fn(state, *chunk, base_keys)
    jax.block_until_ready(result)
  assert int(result.steps_run) == 4
  host_indices = chunk._replace(indices=np.asarray(chunk.indices))
  with jax.transfer_guard("disallow"), pytest.raises(Exception, match="[Dd]isallowed"):
    chunk_fn(state, *host_indices, base_keys)


def test_non_finite_step_leaves_the_last_good_state_and_ends_the_chunk():
  """Global step 5 (the third of the chunk) has a NaN loss: steps 3 and 4 are applied, step 5
  is not, nothing after it runs; bad_step names it and its loss row holds the NaN."""
  split = _split()
  poisoned_step = 5

  graphdef, state = _state()
  source = pipeline.DeviceResident(split, BATCH, 0, 6)
  # The loss turns NaN on the batch of the chosen step (recognised by its first image).
  target = int(data.batch_indices(N, BATCH, 0, poisoned_step - 1)[0])

  def loss_fn(model, images, labels, *, train, key=None):
    out = LOSS(model, images, labels, train=train, key=key)
    marked = jnp.all(jnp.round(images[0] * 255) == split.images[target])
    return out._replace(total=out.total + jnp.where(marked, jnp.nan, 0.0))

  chunk_fn = steps.make_train_chunk(graphdef, loss_fn, builder=datasets.gather())
  _, reference = _state()  # steps 3 and 4 alone, in a chunk that ends before the bad one
  reference, r = chunk_fn(reference, *source.chunk(2, 2), KEYS)
  assert int(r.steps_run) == 2 and (np.asarray(r.metrics.finite[:2]) == 1.0).all()
  state, result = chunk_fn(state, *source.chunk(2, 5), KEYS)
  assert int(result.bad_step) == poisoned_step and int(result.steps_run) == 2
  assert np.isnan(result.metrics.loss[2]) and not np.asarray(result.metrics.count[3:]).any()
  _assert_same(state, reference, rtol=1e-5, atol=1e-6)


def test_choose_keeps_small_splits_on_the_device_and_checks_the_name():
  split = _split()
  assert pipeline.choose("auto", split) == "device"
  assert pipeline.choose("host", split) == "host"
  assert pipeline.device_memory_bytes() > 0
  with pytest.raises(ValueError, match="pipeline must be one of auto, device, host, got 'gpu'"):
    pipeline.choose("gpu", split)


def test_config_and_cli_reject_bad_pipeline_settings(tmp_path):
  with pytest.raises(ValueError, match="pipeline must be one of"):
    TrainConfig(max_steps=1, pipeline="fast").validate()
  with pytest.raises(ValueError, match="steps_per_dispatch must be positive, got 0"):
    TrainConfig(max_steps=1, steps_per_dispatch=0).validate()
  proc = run_cli("train", "--workdir", str(tmp_path / "w"), "--pipeline", "gpu")
  assert proc.returncode == 2
  assert proc.stderr.startswith("capsjax: error: argument --pipeline: invalid choice: 'gpu'")
  assert not (tmp_path / "w").exists()


def _run(tmp_path, name, data_dir, **changes):
  config = TrainConfig(batch_size=16, max_steps=12, log_every=4, checkpoint_every=8,
                       model=dict(TINY_MODEL), **changes)
  final = train(config, tmp_path / name, data_dir, train_limit=256, test_limit=64,
                progress=False)
  records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
  return final, [r for r in records if r["split"] == "train"]


def test_training_loop_is_the_same_on_either_source_and_any_chunk_size(tmp_path, data_dir):
  """Host batches and device-resident data give identical runs; K = 1 (one dispatch per step)
  gives the same losses to float32 rounding."""
  device, device_train = _run(tmp_path, "device", data_dir, pipeline="device")
  host, host_train = _run(tmp_path, "host", data_dir, pipeline="host")
  single, single_train = _run(tmp_path, "k1", data_dir, pipeline="device", steps_per_dispatch=1)
  assert [r["step"] for r in device_train] == [4, 8, 12]
  assert [r["loss"] for r in device_train] == [r["loss"] for r in host_train]
  assert device["test_loss"] == host["test_loss"]
  np.testing.assert_allclose([r["loss"] for r in single_train],
                             [r["loss"] for r in device_train], rtol=1e-4)


def test_nan_inside_a_chunk_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path, data_dir, monkeypatch):
  monkeypatch.setattr(hooks, "_installed", FaultHooks(nan_at_step=11))
  with pytest.raises(NonFiniteError, match="at step 11 .*last good checkpoint is step 8"):
    _run(tmp_path, "nan", data_dir, steps_per_dispatch=4)
