"""Shared helpers for the benchmark scripts."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import capsjax
from capsjax import steps


def capsnet_flops_per_image(batch_size: int = 8) -> float:
  """FLOPs of one training step per image for the default CapsNet, from XLA's cost analysis."""
  model = capsjax.CapsNet(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, steps.make_optimizer(1e-3, 0.96, 2000), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = steps.make_train_step(graphdef, max_shift=2, recon_weight=0.0005)
  images = jnp.zeros((batch_size, 28, 28, 1), jnp.uint8)
  labels = jnp.zeros((batch_size,), jnp.int32)
  cost = step.lower(state, images, labels, jax.random.key(0)).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost["flops"]) / batch_size
