"""The official smallNORB preprocessing of the 2017 CapsNet, as pure JAX (Sarasra/models,
research/capsules, commit 984fbc7, `input_data/norb/norb_input_record.py`), on the 48x48
two-view images `capsjax.data.smallnorb` stores.

Training (L80-85, then L91), per image, in this order, on pixels in 0..255 (L68: the uint8
bytes cast to float without scaling):

1. brightness: one delta uniform in [-63, 63] added to every pixel (`random_brightness`);
2. contrast: each channel moved from its mean by a factor uniform in [0.2, 1.8]
   (`random_contrast`), both unclipped and, unlike CIFAR-10's, on the whole 48x48 image;
3. a random 32x32 crop (`tf.random_crop`, L76-79: 48 -> 32); no flip;
4. per-image standardisation over all 32 * 32 * 2 values.

Test (L86-89): the centre 32x32 crop, then step 4. The helpers are CIFAR-10's
(`capsjax.data.augment.cifar10`).
"""

import jax
import jax.numpy as jnp

from capsjax.data.augment.cifar10 import (brightness_contrast, centre_crop, random_crop,
                                          standardise)

CROP = 32


def distort(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Steps 1-4 for one image [48, 48, 2] float in [0, 1]; returns [32, 32, 2] standardised."""
  colour, crop = jax.random.split(key)
  return standardise(random_crop(crop, brightness_contrast(colour, image * 255.0), CROP))


def train(key: jax.Array, images: jnp.ndarray, labels: jnp.ndarray):
  """The training `Transform`: `distort` on each image of [B, 48, 48, C] (a key each)."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(distort)(keys, images), labels


def test(images: jnp.ndarray, labels: jnp.ndarray):
  """The test processing: the centre 32x32 crop of each image of [B, H, W, C] float in [0, 1],
  standardised."""
  return jax.vmap(lambda x: standardise(centre_crop(x * 255.0, CROP)))(images), labels
