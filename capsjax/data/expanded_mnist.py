"""Expanded MNIST (§5.2): each MNIST digit on a 40x40 canvas, randomly translated when training.

As the official code builds its affNIST training set (Sarasra/models, research/capsules): the
28x28 digit is padded by 6 px on each side and shifted by up to 6 px along each axis (zeros fill
in; the digit never leaves the canvas). Test digits are centred (no shift). `max_shift` of the
config is not used: the canvas's margin sets the translation.
"""

import jax
import jax.numpy as jnp

from capsjax.data import multimnist, storage
from capsjax.data.dataset import Dataset, gather
from capsjax.data.mnist import load_mnist, loss

CANVAS = 40
MAX_SHIFT = (CANVAS - 28) // 2  # 6


def translate(key: jax.Array | None, images: jnp.ndarray, canvas: int = CANVAS,
              max_shift: int = MAX_SHIFT) -> tuple[jnp.ndarray, jnp.ndarray]:
  """[B, 28, 28, C] float -> ([B, canvas, canvas, C], shifts [B, 2]): each digit moved by
  (dy, dx) uniform in [-max_shift, max_shift] (key None: centred, shifts 0)."""
  b = images.shape[0]
  if key is None:
    shifts = jnp.zeros((b, 2), jnp.int32)
  else:
    shifts = jax.random.randint(key, (b, 2), -max_shift, max_shift + 1)
  placed = jax.vmap(lambda x, s: multimnist.place(x, s, canvas))(images, shifts)
  return placed, shifts


def builder(config, split: str, stored: storage.Split):
  """The `Dataset.builder` of expanded MNIST: each stored 28x28 row placed on the 40x40 canvas
  (`translate`), shifted by up to MAX_SHIFT = 6 px along each axis with the step's key when
  training (`split` "train"), centred otherwise. `config` and `stored` are not needed."""
  del config, stored
  rows = gather()

  def fn(key, images, labels, index):
    x, y = rows(None, images, labels, index)
    return translate(key if split == "train" else None, x)[0], y

  return fn


EXPANDED_MNIST = Dataset(
    name="expanded_mnist", description="expanded MNIST (§5.2): MNIST on 40x40, shifted by up to "
    "6 px when training, centred for testing", splits=("train", "test"), load=load_mnist,
    size=lambda split, stored: len(stored), builder=builder, loss=loss)
