"""The official CIFAR-10 preprocessing of the 2017 CapsNet, as pure JAX (Sarasra/models,
research/capsules, commit 984fbc7, `input_data/cifar10/cifar10_input.py`).

Training (`_distort_resize`, L78-82, then L163), per image, in this order, on pixels in 0..255
(the official reader casts the uint8 bytes to float without scaling, L60):

1. a random 24x24 crop (`tf.random_crop`, every offset 0..8 equally likely);
2. a random left-right flip with probability 1/2 (`tf.image.random_flip_left_right`);
3. brightness: one delta uniform in [-63, 63] added to every pixel (`random_brightness`,
   max_delta=63), not clipped (TF does not clip float images);
4. contrast: each channel's pixels moved from the channel's mean by a factor uniform in
   [0.2, 1.8] (`random_contrast(lower=0.2, upper=1.8)`: (x - mean_c) * f + mean_c), not clipped;
5. per-image standardisation (`tf.image.per_image_standardization`): (x - mean) / max(std,
   1/sqrt(N)) over all N = 24 * 24 * 3 values.

Test (L160-163): the centre 24x24 crop (`resize_image_with_crop_or_pad`, offset 4), then step 5.

Step 5 removes any shift of all values, so step 3 changes nothing the network sees (kept, as the
official code has it, for a reader comparing the two). The standardised values are not in
[0, 1]: a network trained on them needs no reconstruction (the official runs use
`remake=false`).
"""

import jax
import jax.numpy as jnp

CROP = 24
MAX_BRIGHTNESS_DELTA = 63.0  # on the 0..255 scale
CONTRAST_RANGE = (0.2, 1.8)


def standardise(image: jnp.ndarray) -> jnp.ndarray:
  """`tf.image.per_image_standardization` of one [H, W, C] image: (x - mean) / max(std,
  1 / sqrt(H * W * C))."""
  mean = jnp.mean(image)
  floor = 1.0 / jnp.sqrt(jnp.asarray(image.size, jnp.float32))
  return (image - mean) / jnp.maximum(jnp.std(image), floor)


def centre_crop(image: jnp.ndarray, size: int = CROP) -> jnp.ndarray:
  """The centre [size, size] window of one [H, W, C] image (offset (H - size) // 2, as
  `tf.image.resize_image_with_crop_or_pad`)."""
  h, w, c = image.shape
  return jax.lax.dynamic_slice(image, ((h - size) // 2, (w - size) // 2, 0), (size, size, c))


def random_crop(key: jax.Array, image: jnp.ndarray, size: int) -> jnp.ndarray:
  """A [size, size] window of one [H, W, C] image at a uniform offset (`tf.random_crop`)."""
  h, w, c = image.shape
  dy, dx = jax.random.randint(key, (2,), 0, jnp.array([h - size + 1, w - size + 1]))
  return jax.lax.dynamic_slice(image, (dy, dx, 0), (size, size, c))


def brightness_contrast(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """`random_brightness(max_delta=63)` then `random_contrast(0.2, 1.8)` of one [H, W, C] image
  on the 0..255 scale, unclipped (steps 3 and 4 of the module docstring)."""
  bright, contrast = jax.random.split(key)
  x = image + jax.random.uniform(bright, (), jnp.float32, -MAX_BRIGHTNESS_DELTA,
                                 MAX_BRIGHTNESS_DELTA)
  factor = jax.random.uniform(contrast, (), jnp.float32, *CONTRAST_RANGE)
  mean_c = jnp.mean(x, axis=(0, 1), keepdims=True)
  return (x - mean_c) * factor + mean_c


def distort(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Steps 1-5 of the module docstring for one image [32, 32, 3] float in [0, 1]; returns
  [24, 24, 3] standardised."""
  crop, flip, colour = jax.random.split(key, 3)
  x = random_crop(crop, image * 255.0, CROP)
  x = jnp.where(jax.random.bernoulli(flip), x[:, ::-1], x)
  return standardise(brightness_contrast(colour, x))


def train(key: jax.Array, images: jnp.ndarray, labels: jnp.ndarray):
  """The training `Transform`: `distort` on each image of [B, 32, 32, 3] (a key each)."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(distort)(keys, images), labels


def test(images: jnp.ndarray, labels: jnp.ndarray):
  """The test processing: the centre 24x24 crop, standardised, of each image of [B, H, W, C]
  float in [0, 1]."""
  return jax.vmap(lambda x: standardise(centre_crop(x * 255.0)))(images), labels
