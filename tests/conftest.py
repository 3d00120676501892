"""Shared fixtures: the shipped TFDS data_dir and a tiny CapsNet for fast unit tests."""

import os
from pathlib import Path

import pytest
from flax import nnx

import capsjax

REPO = Path(__file__).resolve().parents[1]


def shipped_data_dir() -> str | None:
  """$TFDS_DATA_DIR, else ../shared/tensorflow_datasets beside the checkout, else None."""
  env = os.environ.get("TFDS_DATA_DIR")
  if env and Path(env).is_dir():
    return env
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
