"""Efficient-CapsNet (Mazzia et al. 2021) as a trainable `Arch`: margin loss + reconstruction.

The official code (EscVM/Efficient-CapsNet, `models/model.py`, `utils/tools.py`) trains with
Keras' `marginLoss` (Eq. 4 of Sabour et al., m+ 0.9, m- 0.1, lambda 0.5, summed over the
classes, averaged over the batch) plus 0.392 x the mean squared error of the reconstruction
over its 784 pixels, i.e. 0.392 / 784 = 0.0005 x the summed squared error: capsjax's
`recon_weight` 0.0005 on MNIST.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax.nn import losses
from capsjax.nn.efficient import EfficientCapsNet
from capsjax.nn.objective import LossFn, Losses, Outputs, compute_dtype
from capsjax.train.archs.arch import Arch
from capsjax.train.archs.capsnet import CONFIG_KEYS


def create(settings: dict[str, Any], config, rngs: nnx.Rngs) -> EfficientCapsNet:
  """The EfficientCapsNet of recorded `settings`; `config.precision` sets the computation dtype
  (not a setting of the network)."""
  options = {k: v for k, v in settings.items() if k not in ("arch", "input_shape", "num_classes")}
  return EfficientCapsNet(input_shape=tuple(settings["input_shape"]),
                          num_classes=settings["num_classes"],
                          dtype=compute_dtype(config.precision), rngs=rngs, **options)


def loss(config) -> LossFn:
  """Per example: margin loss (Eq. 4) + config.recon_weight x the reconstruction's summed
  squared error (none for a network built without its decoder). Training: batch statistics in
  the batch norms and the decoder masked by the true class; evaluation: running statistics and
  the predicted class."""
  recon_weight = config.recon_weight

  def fn(model: EfficientCapsNet, images, labels, *, train: bool, key=None) -> Losses:
    del key  # no randomness
    out = model(images, labels if train else None, train=train)
    with jax.named_scope("losses"):
      margin = losses.margin_loss(out.lengths, jax.nn.one_hot(labels, model.num_classes))
      if out.reconstructions is None:
        return Losses(margin, {"margin_loss": margin}, out.lengths)
      recon = losses.reconstruction_loss(out.reconstructions, images)
    return Losses(margin + recon_weight * recon,
                  {"margin_loss": margin, "reconstruction_loss": recon}, out.lengths)

  return fn


def outputs(model: EfficientCapsNet, images: jnp.ndarray) -> Outputs:
  """Test-time `Outputs` of images [B, H, W, C] float in [0, 1] (running batch-norm statistics):
  scores = capsule lengths [B, K], the digit capsules [B, K, D], reconstructions from the
  predicted class [B, H, W, C] (None without a decoder) and the couplings c_ij [B, N, K]."""
  out = model(images)
  return Outputs(out.lengths, out.v, out.reconstructions, out.couplings)


ARCH = Arch(name="efficient_capsnet", model_class=EfficientCapsNet, config_keys=CONFIG_KEYS,
            create=create, loss=loss, outputs=outputs,
            description="Efficient-CapsNet (Mazzia et al. 2021: convs with batch norm, depthwise "
            "PrimaryCaps, self-attention routing, decoder)")
