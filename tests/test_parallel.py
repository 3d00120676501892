"""Data parallelism (capsjax/infra/parallel.py) on 4 CPU devices made by
`XLA_FLAGS=--xla_force_host_platform_device_count=4`, in a subprocess (the flag must be set
before JAX starts): the same global batch gives the single-device run's parameters."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from capsjax.infra import parallel
from conftest import REPO, TINY_MODEL_ARGS, run_cli

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from capsjax import data
    from capsjax.core import streams
    from capsjax.data import datasets, pipeline
    from capsjax.data.augment import shift_transform
    from capsjax.infra import parallel
    from capsjax.train import steps
    from capsjax.train.archs import capsnet as capsnet_arch
    from capsjax.train.config import TrainConfig
    from capsjax.train.loop import train
    from capsjax.train.model_state import create_state

    settings = {"arch": "capsnet", "input_shape": [28, 28, 1], "num_classes": 10,
                "conv_channels": 16, "primary_channels": 4, "primary_dim": 4, "digit_dim": 6,
                "decoder_hidden": [32, 64]}
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (128, 28, 28, 1), dtype=np.uint8),
                       rng.integers(0, 10, 128).astype(np.int32), 10)
    config = TrainConfig(batch_size=16, max_steps=4)
    results = {"devices": jax.device_count()}
    states = {}
    for n in (1, 4):
      mesh = parallel.make_mesh(n, config.batch_size)
      graphdef, state = create_state(settings, config)
      state = jax.device_put(state, parallel.replicated(mesh))
      chunk_fn = steps.make_train_chunk(graphdef, capsnet_arch.loss_fn(),
                                        datasets.gather(shift_transform(2)))
      for source_class in (pipeline.DeviceResident, pipeline.HostBatches):
        source = source_class(split, config.batch_size, 0, 4, mesh)
        state, result = chunk_fn(state, *source.chunk(0, 4), streams.run_keys(0))
        state, result = chunk_fn(state, *source.chunk(4, 3), streams.run_keys(0))
      states[n] = [np.asarray(x) for x in jax.tree.leaves(state)]
      leaf = jax.tree.leaves(state)[0]
      results[f"devices_of_state_{n}"] = len(leaf.sharding.device_set)
      results[f"replicated_{n}"] = bool(leaf.sharding.is_fully_replicated)
      results[f"loss_{n}"] = float(result.metrics.loss[:3].sum())
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(states[1], states[4])]
    scale = [float(np.max(np.abs(a))) for a in states[1]]
    results["max_abs_diff"] = max(diffs)
    results["max_rel_diff"] = max(d / max(s, 1e-12) for d, s in zip(diffs, scale))
    # The loop's evaluation (CPU default batch 100) is split over the 4 devices too.
    results["eval_split"] = parallel.batch_placer(parallel.make_mesh(4, 16), 100) is not None
    if len(sys.argv) > 2:  # the whole loop, with checkpoints and evaluation, on 4 devices
      for n in (1, 4):
        cfg = TrainConfig(batch_size=16, max_steps=6, log_every=3, checkpoint_every=3,
                          devices=n, model={k: v for k, v in settings.items()
                                            if k not in ("arch", "input_shape", "num_classes")})
        final = train(cfg, f"{sys.argv[2]}/run{n}", sys.argv[1], train_limit=256,
                      test_limit=64, progress=False)
        results[f"test_loss_{n}"] = final["test_loss"]
    print(json.dumps(results))
""")


def _four_devices(*args):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True,
                        env={**os.environ, **FOUR_DEVICES}, cwd=REPO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_give_the_single_device_parameters(tmp_path, data_dir):
  """7 steps (two chunks, each source) with the batch split over 4 devices vs on one, then the
  whole loop (checkpoints, evaluation). Measured 2026-11-28: parameters differ by at most 8e-8
  (1.7e-6 relative; float32 rounding of the gradient's all-reduce), the losses are equal."""
  r = _four_devices(data_dir, str(tmp_path))
  assert r["devices"] == 4
  assert r["devices_of_state_4"] == 4 and r["replicated_4"]
  assert r["devices_of_state_1"] == 1 and r["eval_split"]
  assert r["max_abs_diff"] < 1e-5, r
  assert abs(r["loss_4"] - r["loss_1"]) <= 1e-4 * abs(r["loss_1"]), r
  assert abs(r["test_loss_4"] - r["test_loss_1"]) <= 1e-4 * abs(r["test_loss_1"]), r


def test_make_mesh_checks_the_device_count_and_the_batch():
  mesh = parallel.make_mesh(None, 32)
  assert mesh.devices.size == 1
  assert parallel.batch_placer(mesh, 100) is None  # one device: batches stay as they are
  with pytest.raises(ValueError, match="2 devices asked for, but only 1 CPU device"):
    parallel.make_mesh(2, 32)
  with pytest.raises(ValueError, match="devices must be a positive integer, got 0"):
    parallel.make_mesh(0, 32)


@pytest.mark.parametrize("devices, batch, message", [
    ("8", "16", "8 devices asked for, but only 4 CPU device"),
    ("3", "16", "batch size 16 does not split over 3 devices"),
    ("0", "16", "devices must be positive, got 0")])
def test_bad_devices_is_one_error_line_and_writes_nothing(tmp_path, data_dir, devices, batch,
                                                         message):
  workdir = tmp_path / "w"
  proc = run_cli("train", "--workdir", str(workdir), "--data-dir", data_dir, "--devices", devices,
                 "--batch-size", batch, "--max-steps", "1", *TINY_MODEL_ARGS, env=FOUR_DEVICES)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("capsjax: error: ") and message in lines[0]
  assert not workdir.exists()
