"""The paper's only augmentation: a random shift of up to `max_shift` pixels with zero padding."""

import jax
import jax.numpy as jnp


def random_shift(key: jax.Array, image: jnp.ndarray, max_shift: int = 2) -> jnp.ndarray:
  """Shifts one image by (dy, dx), each uniform in [-max_shift, max_shift]; vacated pixels are 0.

  Args:
    key: PRNG key.
    image: [H, W, C].
    max_shift: largest shift in pixels along each axis (the paper's 2); 0 returns `image`.

  Returns:
    [H, W, C] shifted image.
  """
  if max_shift == 0:
    return image
  h, w, _ = image.shape
  padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * max_shift + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))


def random_shift_batch(key: jax.Array, images: jnp.ndarray, max_shift: int = 2) -> jnp.ndarray:
  """`random_shift` applied independently to each image of [B, H, W, C] (one key each, split
  from `key`); `max_shift` in pixels."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(random_shift, in_axes=(0, 0, None))(keys, images, max_shift)


def shift_transform(max_shift: int):
  """The training `Transform` (see `capsjax.train.steps`) of the paper's augmentation:
  `(key, images [B,H,W,C], labels) -> (random_shift_batch(key, images, max_shift), labels)`."""

  def transform(key: jax.Array, images: jnp.ndarray, labels: jnp.ndarray):
    return random_shift_batch(key, images, max_shift), labels

  return transform
