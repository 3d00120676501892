"""Shared fixtures: the shipped TFDS data_dir, a tiny CapsNet for fast unit tests, and a runner
for the real `capsjax` command in a subprocess."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

import capsjax

REPO = Path(__file__).resolve().parents[1]


def shipped_data_dir() -> str | None:
  """$TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the checkout, else None; as an
  absolute path (a relative $TFDS_DATA_DIR, as in the README's test command, would otherwise
  break links made to it from temporary folders and runs in another directory)."""
  env = os.environ.get("TFDS_DATA_DIR")
  if env and Path(env).expanduser().is_dir():
    return str(Path(env).expanduser().absolute())
  shared = REPO.parent / "shared" / "tensorflow_datasets"
  return str(shared) if shared.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> str:
  path = shipped_data_dir()
  if path is None:
    pytest.skip("no TFDS data_dir with MNIST (set TFDS_DATA_DIR)")
  return path


def tiny_capsnet(seed: int = 0, **overrides) -> capsjax.CapsNet:
  """A small CapsNet on 28x28x1 input (fast to compile and run)."""
  kwargs = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
                decoder_hidden=(32, 64))
  kwargs.update(overrides)
  return capsjax.CapsNet(rngs=nnx.Rngs(seed), **kwargs)


# `capsjax train --model ...` for the tiny CapsNet above (fast subprocess runs).
TINY_MODEL_ARGS = ["--model", "conv_channels=16", "--model", "primary_channels=4", "--model",
                   "primary_dim=4", "--model", "digit_dim=6", "--model", "decoder_hidden=[32,64]"]


# The real CLI in a subprocess, and the same CLI with the faults of CAPSJAX_FAULT_* variables
# installed by the tests' launcher (tests/faults.py).
CLI = [sys.executable, "-m", "capsjax.cli"]
FAULTY_CLI = [sys.executable, str(REPO / "tests" / "faults.py")]


def records(workdir, split: str) -> list[dict]:
  """The metrics.jsonl records of `workdir` of one split ("train" or "test"), in order."""
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def assert_finite(record: dict) -> None:
  """Asserts that a metrics record has numbers and every one of them is finite."""
  values = [v for v in record.values() if isinstance(v, (int, float))]
  assert values and all(math.isfinite(v) for v in values), record


def run_cli(*args, env=None, timeout=600, program=CLI):
  """Runs `program ARGS` (default: `python -m capsjax.cli ARGS`) to completion; returns the
  CompletedProcess (text)."""
  return subprocess.run([*program, *args], capture_output=True,
                        text=True, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="session")
def cli_env(data_dir, tmp_path_factory) -> dict[str, str]:
  """Environment for subprocess runs: the data dir and a JAX compilation cache shared by all of
  them (each run would otherwise spend ~9 s compiling the same steps)."""
  return {"TFDS_DATA_DIR": data_dir,
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def copy_of_mnist(data_dir: str, target: Path) -> Path:
  """A data_dir at `target` whose mnist/3.0.1 links to the real record files and has editable
  copies of dataset_info.json and features.json; returns the version folder."""
  source = Path(data_dir) / "mnist" / "3.0.1"
  version = target / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  for f in source.iterdir():
    if f.suffix == ".json":
      shutil.copy(f, version / f.name)
    else:
      (version / f.name).symlink_to(f)
  return version
