"""CapsNet as a trainable `Arch`: margin loss (Eq. 4) + 0.0005 x reconstruction loss (§4.1;
the margin loss alone for a network built without its decoder)."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax.nn import losses
from capsjax.nn.model import CapsNet
from capsjax.nn.objective import LossFn, Losses, Outputs, compute_dtype
from capsjax.train.archs.arch import Arch

# TrainConfig fields that are CapsNet settings (recorded with the run's model settings).
CONFIG_KEYS = ("routing", "routing_iters", "routing_options")


def create(settings: dict[str, Any], config, rngs: nnx.Rngs) -> CapsNet:
  """The CapsNet of recorded `settings`; `config.vote_chunk_size` (how votes are computed, same
  results) and `config.precision` (the computation dtype) are not settings of the network."""
  options = {k: v for k, v in settings.items() if k not in ("arch", "input_shape", "num_classes")}
  return CapsNet(input_shape=tuple(settings["input_shape"]), num_classes=settings["num_classes"],
                 vote_chunk_size=config.vote_chunk_size,
                 dtype=compute_dtype(config.precision), rngs=rngs, **options)


def loss(config) -> LossFn:
  """`loss_fn(config.recon_weight)`."""
  return loss_fn(config.recon_weight)


def loss_fn(recon_weight: float = losses.RECONSTRUCTION_WEIGHT) -> LossFn:
  """Per example: margin loss + recon_weight x the reconstruction's summed squared error.

  Training masks the decoder by the true class, evaluation by the predicted one (§4.1). For
  `CapsNet(variant="official")` the margin loss is the official code's: 0.5 x Eq. 4 per class,
  averaged over the K classes (`_margin_loss` + `reduce_mean` over batch and classes), i.e.
  Eq. 4's sum / 2K, so the reconstruction term weighs 2K = 20 times more than in Eq. 4.
  """

  def fn(model: CapsNet, images, labels, *, train: bool, key=None) -> Losses:
    del key  # CapsNet has no randomness
    out = model(images, labels if train else None)
    with jax.named_scope("losses"):
      margin = losses.margin_loss(out.lengths, jax.nn.one_hot(labels, model.num_classes))
      if model.variant == "official":
        margin = margin / (2 * model.num_classes)
      if out.reconstructions is None:  # built without its decoder (reconstruction=False)
        return Losses(margin, {"margin_loss": margin}, out.lengths)
      recon = losses.reconstruction_loss(out.reconstructions, images)
    return Losses(margin + recon_weight * recon,
                  {"margin_loss": margin, "reconstruction_loss": recon}, out.lengths)

  return fn


def outputs(model: CapsNet, images: jnp.ndarray) -> Outputs:
  """Test-time `Outputs` of images [B, H, W, C] float in [0, 1]: scores = capsule lengths |v_k|
  (or the rule's activations) [B, K], the digit capsules [B, K, D], reconstructions from the
  predicted class's capsule [B, H, W, C] and the couplings c_ij [B, N_primary, K]."""
  out = model(images)
  return Outputs(out.lengths, out.v, out.reconstructions, out.couplings)


ARCH = Arch(name="capsnet", model_class=CapsNet, config_keys=CONFIG_KEYS, create=create,
            loss=loss, outputs=outputs,
            description="the paper's CapsNet (Conv1, PrimaryCaps, DigitCaps with routing, decoder)")
