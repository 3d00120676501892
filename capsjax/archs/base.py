"""What the training loop needs from a network: the `Arch` record of pure functions.

The loop (`capsjax.train`) never asks which network it trains. Everything that differs between
CapsNet and the paper's baseline CNN (how the network is built from the config, its loss and
logged loss terms, its test-time outputs) comes from the network's `Arch`, looked up by the
`arch` name a run records (`capsjax.archs.get`).
"""

from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx


# TrainConfig.precision -> the computation dtype a network is built with (None: float32). Mixed
# precision: parameters, optimizer state and losses stay float32 whatever the network computes in.
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}


def compute_dtype(precision: str) -> Any:
  """The computation dtype of `precision` ("fp32": None, "bf16": bfloat16)."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
  return PRECISIONS[precision]


class Outputs(NamedTuple):
  """Test-time outputs of a network for B images.

  Attributes:
    scores: [B, K] class scores; the highest is the prediction (CapsNet: capsule lengths).
    capsules: [B, K, D] class capsules, or None for a network without capsules.
    reconstructions: [B, H, W, C] in [0, 1] decoded from the predicted class, or None for a
      network without a decoder.
    couplings: [B, N_in, K] final routing coefficients from the input capsules to the class
      capsules, or None for a network without routing.
  """

  scores: jnp.ndarray
  capsules: jnp.ndarray | None
  reconstructions: jnp.ndarray | None
  couplings: jnp.ndarray | None = None


class Losses(NamedTuple):
  """The training objective of B examples, per example.

  Attributes:
    total: [B] what is minimised (its batch mean).
    terms: {name: [B]} the parts of `total` that are logged under `name` (and `test_` + name),
      e.g. CapsNet's margin_loss and reconstruction_loss; {} when there are none.
    scores: [B, K] class scores (for accuracy).
    correct: [B] whether each example counts as right; None: the highest score is the label
      (MultiMNIST sets its own rule: the two longest capsules are the two classes).
  """

  total: jnp.ndarray
  terms: dict[str, jnp.ndarray]
  scores: jnp.ndarray
  correct: jnp.ndarray | None = None


class LossFn(Protocol):
  """`loss(model, images float [B,H,W,C] in [0,1], labels [B], *, train, key) -> Losses`.

  `labels` are the dataset's targets: class indices [B] for single-digit sets, a pytree for
  others (MultiMNIST: both classes and each digit's image; `capsjax.datasets`).

  `train` selects training behaviour (CapsNet: decoder masked by the true class; baseline:
  dropout, which draws from `key`); `key` is None when `train` is False.
  """

  def __call__(self, model: nnx.Module, images: jnp.ndarray, labels: jnp.ndarray, *,
               train: bool, key: jax.Array | None) -> Losses:
    ...


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
