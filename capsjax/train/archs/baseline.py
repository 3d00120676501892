"""The paper's baseline CNN (§5) as a trainable `Arch`: softmax cross-entropy."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capsjax.nn.cnn import BaselineCNN
from capsjax.nn.objective import LossFn, Losses, Outputs, compute_dtype
from capsjax.train.archs.arch import Arch


def create(settings: dict[str, Any], config, rngs: nnx.Rngs) -> BaselineCNN:
  """The BaselineCNN of recorded `settings` (input_shape, num_classes and any
  `TrainConfig.model` options); `config.precision` sets the computation dtype, not a setting of
  the network."""
  options = {k: v for k, v in settings.items() if k not in ("arch", "input_shape", "num_classes")}
  return BaselineCNN(input_shape=tuple(settings["input_shape"]),
                     num_classes=settings["num_classes"],
                     dtype=compute_dtype(config.precision), rngs=rngs,
                     **options)


def loss(config) -> LossFn:
  """Per-example softmax cross-entropy; dropout (drawn from `key`) only when training."""
  del config

  def fn(model: BaselineCNN, images, labels, *, train: bool, key=None) -> Losses:
    logits = model(images, dropout_key=key if train else None)
    return Losses(optax.softmax_cross_entropy_with_integer_labels(logits, labels), {}, logits)

  return fn


def outputs(model: BaselineCNN, images: jnp.ndarray) -> Outputs:
  """Test-time `Outputs` of images [B, H, W, C] float in [0, 1]: scores = softmax probabilities
  [B, K]; no capsules, reconstructions or couplings (None)."""
  return Outputs(jax.nn.softmax(model(images)), None, None)


ARCH = Arch(name="baseline", model_class=BaselineCNN, config_keys=(), create=create, loss=loss,
            outputs=outputs,
            description="the paper's baseline CNN (3 convs 5x5 256/256/128, FC 328/192, dropout)")
