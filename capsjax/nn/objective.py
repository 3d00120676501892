"""What a network's training objective returns, and what it shows at test time: the records
the training loop (`capsjax.train`) and the dataset records (`capsjax.data`) pass around.

`LossFn` is the signature of every objective (CapsNet's margin + reconstruction loss, the
baseline's cross-entropy, MultiMNIST's two-digit loss); `Losses` is its per-example result and
`Outputs` a network's test-time outputs. `PRECISIONS` maps a run's precision setting to the
computation dtype its network is built with.
"""

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx


# TrainConfig.precision -> the computation dtype a network is built with (None: float32). Mixed
# precision: parameters, optimizer state and losses stay float32 whatever the network computes in.
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}


def compute_dtype(precision: str) -> Any:
  """The computation dtype of `precision` ("fp32": None, i.e. float32; "bf16": jnp.bfloat16).

  Raises:
    ValueError: `precision` is not a key of PRECISIONS.
  """
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
  others (MultiMNIST: both classes and each digit's image; `capsjax.data.datasets`).

  `train` selects training behaviour (CapsNet: decoder masked by the true class; baseline:
  dropout, which draws from `key`); `key` is None when `train` is False.
  """

  def __call__(self, model: nnx.Module, images: jnp.ndarray, labels: jnp.ndarray, *,
               train: bool, key: jax.Array | None) -> Losses:
    ...
