"""Mixed precision (`TrainConfig.precision="bf16"`): bfloat16 convolutions, votes and decoder
matmuls; float32 parameters, optimizer state, routing, squash and losses."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax import data
from capsjax.data import datasets
from capsjax.train import archs
from capsjax.train.config import TrainConfig
from capsjax.train.model_state import create_state
from conftest import run_cli, tiny_capsnet
from real_path import Trainer

SETTINGS = {"arch": "capsnet", "input_shape": [28, 28, 1], "num_classes": 10,
            "conv_channels": 16, "primary_channels": 4, "primary_dim": 4, "digit_dim": 6,
            "decoder_hidden": [32, 64]}


def _images(n=4):
  return jnp.asarray(np.random.default_rng(0).uniform(0, 1, (n, 28, 28, 1)), jnp.float32)


def _dtypes_in(fn, *args) -> list[str]:
  """The first operand's dtype of every dot and convolution in `fn`'s program as lowered for
  this CPU (StableHLO: "f32", "bf16")."""
  text = jax.jit(fn).lower(*args).as_text()
  return re.findall(r"stablehlo\.(?:dot_general|convolution)\b.*: \(tensor<(?:\d+x)*(\w+)>", text)


def test_bf16_network_computes_matmuls_in_bf16_and_returns_float32():
  fp32, bf16 = tiny_capsnet(0), tiny_capsnet(0, dtype=jnp.bfloat16)
  images = _images()
  ops32 = _dtypes_in(lambda x: fp32(x).reconstructions, images)
  ops16 = _dtypes_in(lambda x: bf16(x).reconstructions, images)
  assert set(ops32) == {"f32"} and len(ops16) == len(ops32)
  # Conv1, PrimaryCaps, the votes and the decoder's 3 layers; the routing's stay float32.
  assert ops16.count("bf16") == 6, ops16
  out32, out16 = fp32(images), bf16(images)
  for name in ("lengths", "v", "reconstructions", "couplings"):
    assert getattr(out16, name).dtype == jnp.float32, name
  # Same parameters, so the outputs agree to bfloat16 rounding (measured: ~1e-3 relative).
  np.testing.assert_allclose(out16.lengths, out32.lengths, rtol=3e-2, atol=3e-3)
  params = [str(x.dtype) for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))]
  assert set(params) == {"float32"}


def test_bf16_training_keeps_parameters_and_optimizer_state_float32():
  config = TrainConfig(max_steps=1, precision="bf16")
  graphdef, state = create_state(SETTINGS, config)
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
                     rng.integers(0, 10, 8).astype(np.int32), 10)
  mnist = datasets.get("mnist")
  trainer = Trainer(graphdef, mnist.loss(archs.get("capsnet"), config), split, 8,
                    builder=mnist.builder(config, "train", split), capacity=3)
  state, result = trainer(state, 0, 3)
  assert result.steps_run == 3 and (result.metrics.finite == 1.0).all()
  floats = {str(x.dtype) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)}
  assert floats == {"float32"}
  assert result.metrics.loss.dtype == np.float32


def test_baseline_in_bf16():
  config = TrainConfig(arch="baseline", max_steps=1, precision="bf16")
  model = archs.get("baseline").create(
      {"arch": "baseline", "input_shape": [28, 28, 1], "num_classes": 10,
       "conv_channels": [8, 8], "hidden": [16]}, config, nnx.Rngs(0))
  assert _dtypes_in(lambda x: model(x), _images(2)) == ["bf16"] * 4  # 2 convs, 2 dense layers
  assert model(_images(2)).dtype == jnp.float32


def test_bad_precision_is_one_error_line(tmp_path):
  with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
    TrainConfig(max_steps=1, precision="fp16").validate()
  proc = run_cli("train", "--workdir", str(tmp_path / "w"), "--precision", "fp16")
  assert proc.returncode == 2
  assert proc.stderr.startswith("capsjax: error: argument --precision: invalid choice: 'fp16'")
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()
