"""MultiMNIST (the paper's §6), generated on the fly: pure JAX functions of (key, example index).

As the paper and the official code (Sarasra/models, research/capsules/input_data/mnist) build
it: each 28x28 digit is padded to a 36x36 canvas and shifted by up to 4 px along each axis (zeros
fill in); it is paired with a digit of a different class from the same split, shifted
independently; the two are merged as min(a + b, 1) (the official `np.minimum(base + top, 255)`
on uint8). Every digit yields `pairs_per_image` pairs (1,000 in the paper: 60M training and 10M
test examples), so example i has base digit i // pairs_per_image. Nothing is stored: the same
(key, i) gives the same pair in any process, on any backend, after any resume.

`make_pairs(images, labels)` returns `pair(key, index) -> Pair` for one example; `jax.vmap` it
over a batch of indices (inside the compiled step, like the other augmentations).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CANVAS = 36
MAX_SHIFT = 4
PAIRS_PER_IMAGE = 1000


class Pair(NamedTuple):
  """One MultiMNIST example (float32 in [0, 1])."""

  image: jnp.ndarray  # [36, 36, C]: min(first + second, 1)
  digits: jnp.ndarray  # [2, 36, 36, C]: each shifted digit alone (the reconstruction targets)
  labels: jnp.ndarray  # [2] int32: the base digit's class, then its partner's (always different)
  shifts: jnp.ndarray  # [2, 2] int32: (dy, dx) of each digit, each in [-4, 4]
  sources: jnp.ndarray  # [2] int32: the split indices of the two digits


def place(digit: jnp.ndarray, shift: jnp.ndarray, canvas: int = CANVAS) -> jnp.ndarray:
  """A [H, W, C] digit centred on a [canvas, canvas, C] zero canvas, moved by shift = (dy, dx)
  pixels (|dy|, |dx| <= (canvas - H) / 2, so nothing leaves the canvas)."""
  h, w, c = digit.shape
  margin = (canvas - h) // 2
  padded = jnp.pad(digit, ((2 * margin, 2 * margin), (2 * margin, 2 * margin), (0, 0)))
  return jax.lax.dynamic_slice(padded, (margin - shift[0], margin - shift[1], 0),
                               (canvas, canvas, c))


def num_examples(split_size: int, pairs_per_image: int = PAIRS_PER_IMAGE) -> int:
  """How many pairs a split of `split_size` digits yields."""
  return split_size * pairs_per_image


def make_pairs(images: np.ndarray, labels: np.ndarray, num_classes: int = 10,
               pairs_per_image: int = PAIRS_PER_IMAGE, max_shift: int = MAX_SHIFT
               ) -> Callable[[jax.Array, jnp.ndarray], Pair]:
  """`pair(key, index) -> Pair` over the digits `images` [N, 28, 28, C] uint8, `labels` [N]
  (`pairing` with the images fixed). Raises ValueError if fewer than two classes are present."""
  pair_of = pairing(labels, num_classes, pairs_per_image, max_shift)
  images_j = jnp.asarray(images)
  return lambda key, index: pair_of(key, index, images_j)


def pairing(labels: np.ndarray, num_classes: int = 10, pairs_per_image: int = PAIRS_PER_IMAGE,
            max_shift: int = MAX_SHIFT) -> Callable[[jax.Array, jnp.ndarray, jnp.ndarray], Pair]:
  """`pair(key, index, images) -> Pair` over a split with class `labels` [N]; `images` [N, H,
  W, C] uint8 is an argument, so the split can live on the device as the step's input.

  The partner is drawn uniformly from the digits of the other classes: with the split's indices
  sorted by class, the r-th digit not of class c is `by_class[r]` if r < start[c], else
  `by_class[r + count[c]]`. Raises ValueError if fewer than two classes are present.
  """
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if np.count_nonzero(counts) < 2:
    raise ValueError(f"MultiMNIST needs digits of at least two classes, got classes "
                     f"{sorted(set(labels.tolist()))}.")
  by_class = jnp.asarray(np.argsort(labels, kind="stable").astype(np.int32))
  start = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32))
  counts_j = jnp.asarray(counts.astype(np.int32))
  labels_j = jnp.asarray(labels.astype(np.int32))
  n = len(labels)

  def pair(key: jax.Array, index: jnp.ndarray, images: jnp.ndarray) -> Pair:
    images = jnp.asarray(images)
    canvas = images.shape[1] + 2 * max_shift
    base = (index // pairs_per_image).astype(jnp.int32)
    k_partner, k_shift = jax.random.split(jax.random.fold_in(key, index))
    c = labels_j[base]
    r = jax.random.randint(k_partner, (), 0, n - counts_j[c])
    partner = by_class[jnp.where(r < start[c], r, r + counts_j[c])]
    shifts = jax.random.randint(k_shift, (2, 2), -max_shift, max_shift + 1)
    sources = jnp.stack([base, partner])
    digits = jax.vmap(lambda i, s: place(images[i].astype(jnp.float32) / 255.0, s, canvas))(
        sources, shifts)
    return Pair(jnp.minimum(digits[0] + digits[1], 1.0), digits, labels_j[sources], shifts,
                sources)

  return pair


def both_correct(lengths: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """[B] bool: the two longest capsules are exactly the example's two classes (the official
  rule, and the paper's error of 5.2% counts examples where this fails)."""
  top2 = jax.lax.top_k(lengths, 2)[1]
  return jnp.all(jnp.sort(top2, axis=-1) == jnp.sort(labels, axis=-1), axis=-1)


def one_correct(lengths: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """[B] bool: at least one of the two longest capsules is one of the example's classes."""
  top2 = jax.lax.top_k(lengths, 2)[1]
  return jnp.any(top2[:, :, None] == labels[:, None, :], axis=(-2, -1))
