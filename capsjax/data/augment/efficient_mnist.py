"""The official Efficient-CapsNet MNIST augmentation, as pure JAX (EscVM/Efficient-CapsNet,
`utils/pre_process_mnist.py`, `generate_tf_data`): per image, in this order,

1. `image_rotate_random`: with probability 1/2, a rotation about pixel (14, 14) by
   trunc(30 * clip(N(0, 0.33), -0.9999, 0.9999)) whole degrees, bilinear, zero outside
   (OpenCV's `getRotationMatrix2D` + `warpAffine`);
2. `image_shift_rand`: a shift along each axis, left/up or right/down with probability 1/2, by
   floor(a * margin) pixels, a = min(|N(0, 0.33)|, 0.9999) per axis, where the margin is the
   digit's distance to that border (the shift never pushes ink off the image); the official
   rightward/downward amount uses margin + 1, which floor keeps within the margin;
3. `image_squish_random`: a horizontal squish by w = floor(7 a + 1) pixels (Lanczos-3 with
   antialiasing, as `tf.image.resize`), the squished image placed w // 2 + floor(2 a') pixels
   from the left, cropped to the image;
4. `image_erase_random`: a 4x4 patch of zeros at row and column floor(19 u) + 4 each, u uniform.

The official code reads pixels as uint8 / 256 and rotates with OpenCV's fixed-point bilinear
interpolation (1/32-pixel steps); here pixels are / 255 and the interpolation is exact, which
moves values by less than 1/255. The test images are not augmented.
"""

import math

import jax
import jax.numpy as jnp

# 30 degrees per unit of the clipped N(0, 0.33) draw: `angle = rand_amts[0] * 30`.
MAX_ROTATION_DEGREES = 30.0
DRAW_STDDEV = 0.33
DRAW_CLIP = 0.9999
ERASE_SIZE = 4


def _clipped_normal(key: jax.Array, shape, absolute: bool) -> jnp.ndarray:
  """N(0, 0.33) draws clipped to [-0.9999, 0.9999] (or their absolute values, clipped to 0.9999)."""
  x = DRAW_STDDEV * jax.random.normal(key, shape)
  return jnp.minimum(jnp.abs(x), DRAW_CLIP) if absolute else jnp.clip(x, -DRAW_CLIP, DRAW_CLIP)


def rotate(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Step 1: [H, W] -> [H, W], rotated by whole degrees about (H/2, W/2), or unchanged (1/2)."""
  amounts = _clipped_normal(key, (2,), absolute=False)
  angle = jnp.trunc(amounts[0] * MAX_ROTATION_DEGREES) * (math.pi / 180)  # Python's int()
  h, w = image.shape
  cy, cx = h / 2, w / 2
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # warpAffine maps each output pixel through the inverse of getRotationMatrix2D's matrix.
  src_x = cos * (cols - cx) - sin * (rows - cy) + cx
  src_y = sin * (cols - cx) + cos * (rows - cy) + cy
  rotated = jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=1, mode="constant",
                                              cval=0.0)
  return jnp.where(amounts[1] > 0, image, rotated)


def _margins(ink: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(before, after): the empty lines before the first and after the last True of `ink` [N]
  (0 and 0 for an image without ink)."""
  n = ink.shape[0]
  index = jnp.arange(n)
  first = jnp.min(jnp.where(ink, index, n))
  last = jnp.max(jnp.where(ink, index, -1))
  empty = ~jnp.any(ink)
  return jnp.where(empty, 0, first), jnp.where(empty, 0, n - 1 - last)


def shift_within_margins(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Step 2: [H, W] -> [H, W], shifted along each axis by at most the digit's margin there."""
  k_dir, k_amount = jax.random.split(key)
  directions = jnp.floor(jax.random.uniform(k_dir, (2,)) * 2).astype(jnp.int32)
  amounts = _clipped_normal(k_amount, (2,), absolute=True)
  left, right = _margins(jnp.sum(image, axis=0) > 0)
  top, bottom = _margins(jnp.sum(image, axis=1) > 0)
  x_amounts = jnp.stack([jnp.floor(-amounts[0] * left), jnp.floor(amounts[0] * (1 + right))])
  y_amounts = jnp.stack([jnp.floor(-amounts[1] * top), jnp.floor(amounts[1] * (1 + bottom))])
  dx = x_amounts[directions[1]].astype(jnp.int32)
  dy = y_amounts[directions[0]].astype(jnp.int32)
  return jnp.roll(jnp.roll(image, dy, axis=0), dx, axis=1)


def squish(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Step 3: [H, W] -> [H, W], the width reduced by 1..W/4 pixels and the result re-placed."""
  h, w = image.shape
  amounts = _clipped_normal(key, (2,), absolute=True)
  width_mod = jnp.floor(amounts[0] * (w / 4) + 1)
  offset = jnp.floor(width_mod / 2) + jnp.floor(amounts[1] * 2)
  # tf.image.resize(antialias=True) is TF's ScaleAndTranslate, which jax.image mirrors:
  # resizing to W - width_mod columns and padding by `offset` is one scale and translation.
  scale = jnp.stack([1.0, (w - width_mod) / w])
  translation = jnp.stack([0.0, offset])
  return jax.image.scale_and_translate(image, (h, w), (0, 1), scale, translation,
                                       method="lanczos3", antialias=True)


def erase(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Step 4: [H, W] -> [H, W] with a 4x4 patch of zeros at rows/columns floor(19 u) + 4.

  The official code's 19 and 4 are for 28x28 MNIST (the patch's corner in [4, 22]); they are
  kept as they are for every image size.
  """
  corner = (jnp.floor(jax.random.uniform(key, (2,)) * 19) + 4).astype(jnp.int32)
  h, w = image.shape
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = ((rows >= corner[0]) & (rows < corner[0] + ERASE_SIZE) &
            (cols >= corner[1]) & (cols < corner[1] + ERASE_SIZE))
  return jnp.where(inside, 0.0, image)


def augment_image(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
  """Steps 1-4 on one single-channel image [H, W, 1] float -> [H, W, 1] float32.

  Raises:
    ValueError: an image with more than one channel (the official pipeline is MNIST's).
  """
  if image.ndim != 3 or image.shape[-1] != 1:
    raise ValueError(f"the efficient_capsnet augmentation takes single-channel images "
                     f"[H, W, 1], got shape {tuple(image.shape)}.")
  k_rot, k_shift, k_squish, k_erase = jax.random.split(key, 4)
  x = image[..., 0].astype(jnp.float32)
  x = rotate(k_rot, x)
  x = shift_within_margins(k_shift, x)
  x = squish(k_squish, x)
  return erase(k_erase, x)[..., None]


def transform(key: jax.Array, images: jnp.ndarray, labels):
  """The training `Transform`: `augment_image` on each image of [B, H, W, 1] (one key each,
  split from `key`); labels unchanged."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_image)(keys, images), labels
