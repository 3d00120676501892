"""What the training loop needs from a network: the `Arch` record of pure functions.

The loop (`capsjax.train`) never asks which network it trains. Everything that differs between
CapsNet and the paper's baseline CNN (how the network is built from the config, its loss and
logged loss terms, its test-time outputs) comes from the network's `Arch`, looked up by the
`arch` name a run records (`capsjax.train.archs.get`).
"""

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
from flax import nnx

from capsjax.nn.objective import LossFn, Outputs


class Arch(NamedTuple):
  """A network the training loop can train, evaluate, checkpoint and restore.

  Attributes:
    name: what `--arch` and a run's recorded settings call it.
    model_class: the nnx.Module; its keyword arguments other than input_shape, num_classes,
      rngs and the names in `config_keys` are what `TrainConfig.model` may set.
    config_keys: TrainConfig fields that are settings of this network (CapsNet: routing,
      routing_iters, routing_options), recorded with the run's model settings.
    create: `create(settings, config, rngs) -> model` from a run's recorded settings
      (input_shape, num_classes, the `config_keys` and any `TrainConfig.model` options; keys an
      older run did not record take the constructor's defaults).
    loss: `loss(config) -> LossFn`.
    outputs: `outputs(model, images float [B,H,W,C]) -> Outputs` at test time.
    description: one line for `--help` and error messages.
  """

  name: str
  model_class: type
  config_keys: tuple[str, ...]
  create: Callable[[dict[str, Any], Any, nnx.Rngs], nnx.Module]
  loss: Callable[[Any], LossFn]
  outputs: Callable[[nnx.Module, jnp.ndarray], Outputs]
  description: str
