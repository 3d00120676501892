"""Affine-robustness test sets (§5.2): an affNIST-style set built from the MNIST test digits,
and the real affNIST test set read from the `.mat` files its page publishes.

affNIST (T. Tieleman, https://www.cs.toronto.edu/~tijmen/affNIST/) puts each MNIST digit on a
40x40 canvas under 32 random affine transformations. The ranges used here are rotation in
[-20, 20] degrees, shear in [-0.2, 0.2], horizontal and vertical scale each in [0.8, 1.2], and a
translation that keeps the whole digit on the canvas. NOT CONFIRMED: the stored copies of the
page that this project could read end before its list of ranges; these values are from memory
of that page, and the one clue found in code (a loader bucketing the first transform parameter
as (rotation + 20) // 5) agrees with the rotation range only. Change `RANGES` if the page says
otherwise.

The affNIST-style set: example i is test digit i // 32 under a transformation drawn from
fold_in(streams.eval_stream("affnist_style"), i) (`capsjax.core.streams`: the fixed test seed's
stream of this set), so it is the same set in every run and process (320,000 examples
like the real test set; `--test-examples 10000` takes one transformation of each digit).
"""

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capsjax.core import streams
from capsjax.data import storage
from capsjax.data.dataset import Dataset, gather
from capsjax.data.mnist import load_mnist, loss

CANVAS = 40
PER_DIGIT = 32
# (low, high) of each parameter, drawn uniformly (see the module docstring: not confirmed).
RANGES = {"rotation_deg": (-20.0, 20.0), "shear": (-0.2, 0.2), "scale_x": (0.8, 1.2),
          "scale_y": (0.8, 1.2)}
# The published files (https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/): test.mat
# (from test.mat.zip) holds all 320,000 test examples; test_batches/1.mat ... 32.mat the same
# in 32 parts. Either goes in DATA_DIR/affnist/.
AFFNIST_FILES = ("test.mat", "test_batches")
AFFNIST_SIZE = 320_000


class Warp(NamedTuple):
  """One affNIST-style example and the transformation that made it.

  Attributes:
    image: [40, 40, C] float in [0, 1].
    rotation_deg: () rotation in degrees.
    shear: () shear factor (x += shear * y).
    scale: [2] scale factors (y, x).
    translation: [2] int (dy, dx) in pixels from the centred position.
  """

  image: jnp.ndarray  # [40, 40, C] float in [0, 1]
  rotation_deg: jnp.ndarray
  shear: jnp.ndarray
  scale: jnp.ndarray  # [2] (y, x)
  translation: jnp.ndarray  # [2] int (dy, dx) from the centred position


def affine_matrix(rotation_deg, shear, scale) -> jnp.ndarray:
  """[2, 2] map of (y, x) offsets from the digit's centre: rotation @ shear @ scale.

  Args:
    rotation_deg: rotation angle in degrees.
    shear: shear factor (x += shear * y).
    scale: [2] scale factors (y, x).
  """
  t = jnp.deg2rad(rotation_deg)
  rotation = jnp.array([[jnp.cos(t), -jnp.sin(t)], [jnp.sin(t), jnp.cos(t)]])
  shearing = jnp.array([[1.0, 0.0], [shear, 1.0]])  # x += shear * y
  return rotation @ shearing @ jnp.diag(jnp.asarray(scale, jnp.float32))


def warp(key: jax.Array, digit: jnp.ndarray, canvas: int = CANVAS) -> Warp:
  """One digit [H, W, C] float -> a random affine transformation of it on a [canvas, canvas, C]
  canvas (bilinear resampling; parameters uniform in RANGES), translated by a uniform integer
  amount that keeps every inked pixel on the canvas."""
  keys = jax.random.split(key, 5)
  draw = lambda k, name: jax.random.uniform(k, (), jnp.float32, *RANGES[name])
  rotation, shear = draw(keys[0], "rotation_deg"), draw(keys[1], "shear")
  scale = jnp.stack([draw(keys[2], "scale_y"), draw(keys[3], "scale_x")])
  inverse = jnp.linalg.inv(affine_matrix(rotation, shear, scale))
  h, w, c = digit.shape
  grid = jnp.stack(jnp.meshgrid(jnp.arange(canvas), jnp.arange(canvas), indexing="ij"), -1)
  offsets = grid.astype(jnp.float32) - (canvas - 1) / 2
  source = offsets @ inverse.T + jnp.array([(h - 1) / 2, (w - 1) / 2])
  centred = jnp.stack([jax.scipy.ndimage.map_coordinates(
      digit[..., i], [source[..., 0], source[..., 1]], order=1, mode="constant", cval=0.0)
      for i in range(c)], -1)
  ink_rows = jnp.any(centred > 0, axis=(1, 2))
  ink_cols = jnp.any(centred > 0, axis=(0, 2))
  idx = jnp.arange(canvas)
  lows = jnp.stack([jnp.min(jnp.where(ink_rows, idx, canvas)),
                    jnp.min(jnp.where(ink_cols, idx, canvas))])
  highs = jnp.stack([jnp.max(jnp.where(ink_rows, idx, -1)),
                     jnp.max(jnp.where(ink_cols, idx, -1))])
  lows, highs = jnp.minimum(lows, highs), jnp.maximum(highs, lows)  # a blank digit: no move
  translation = jax.random.randint(keys[4], (2,), -lows, canvas - highs)
  padded = jnp.pad(centred, ((canvas, canvas), (canvas, canvas), (0, 0)))
  image = jax.lax.dynamic_slice(padded, (canvas - translation[0], canvas - translation[1], 0),
                                (canvas, canvas, c))
  return Warp(jnp.clip(image, 0.0, 1.0), rotation, shear, scale, translation)


def style_builder(config, split: str, stored: storage.Split):
  """The `Dataset.builder` of the affNIST-style test set: example i is stored test digit
  i // PER_DIGIT under `warp` with key fold_in(eval_stream("affnist_style"), i), so the set is
  the same in every run (the step's key, `config`, `split` and `stored` are not used)."""
  del config, split, stored
  rows = gather()
  seed_key = streams.eval_stream("affnist_style")

  def fn(key, images, labels, index):
    del key
    digits, y = rows(None, images, labels, index // PER_DIGIT)
    keys = jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(index)
    return jax.vmap(warp)(keys, digits).image, y

  return fn


def affnist_dir(data_dir) -> Path:
  """DATA_DIR/affnist (DATA_DIR: `data_dir`, else $TFDS_DATA_DIR)."""
  return storage.resolve_data_dir(data_dir) / "affnist"


def read_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
  """One affNIST `.mat` file -> (images uint8 [N, 40, 40, 1], labels int32 [N]).

  The layout of the published files: a struct `affNISTdata` whose field `image` is uint8
  [1600, N], one 40x40 image per column in row-major order, and `label_int` [1, N] (also
  `label_one_of_n`, `human_readable_transform`, ..., not read). A float copy in [0, 1] is
  scaled to 0..255.

  Raises:
    ValueError: a missing file, one that is not a MATLAB file, or one whose layout differs
      (no `affNISTdata`, no `image`/`label_int` field, shapes that do not match), naming what
      differs.
  """
  from scipy import io as sio

  path = Path(path)
  if not path.is_file():
    raise ValueError(f"affNIST file {str(path)!r} does not exist; expected a .mat file from "
                     "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/.")
  try:
    contents = sio.loadmat(str(path), squeeze_me=False, struct_as_record=True)
  except Exception as e:  # scipy raises several types for a file that is not a .mat
    raise ValueError(f"could not read {str(path)!r} as a MATLAB file: {e}") from e
  if "affNISTdata" not in contents:
    found = ", ".join(k for k in contents if not k.startswith("__")) or "nothing"
    raise ValueError(f"{str(path)!r} has no variable 'affNISTdata' (found: {found}); expected "
                     "an affNIST .mat file.")
  record = contents["affNISTdata"]
  fields = record.dtype.names or ()
  if "image" not in fields or "label_int" not in fields:
    raise ValueError(f"{str(path)!r}: affNISTdata has fields {', '.join(fields) or 'none'}; "
                     "expected 'image' and 'label_int'.")
  image = np.asarray(record["image"].flat[0])
  labels = np.asarray(record["label_int"].flat[0]).reshape(-1)
  side = CANVAS * CANVAS
  if image.ndim != 2 or image.shape[0] != side or image.shape[1] != labels.size:
    raise ValueError(f"{str(path)!r}: image has shape {image.shape} and label_int "
                     f"{labels.size} entries; expected image [{side}, N] (one 40x40 image per "
                     "column) and N labels.")
  if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0:
    image = np.round(image * 255)  # a float copy in [0, 1]
  images = image.T.reshape(-1, CANVAS, CANVAS, 1).astype(np.uint8)
  return images, labels.astype(np.int32)


def _load_affnist(split: str, data_dir, limit: int | None) -> storage.Split:
  folder = affnist_dir(data_dir)
  whole = folder / "test.mat"
  parts = sorted((folder / "test_batches").glob("*.mat"),
                 key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
  if whole.is_file():
    images, labels = read_mat(whole)
  elif parts:
    read = [read_mat(p) for p in parts]
    images = np.concatenate([r[0] for r in read])
    labels = np.concatenate([r[1] for r in read])
  else:
    raise ValueError(f"the affNIST test set is not in {str(folder)!r}: expected test.mat (from "
                     "test.mat.zip) or test_batches/1.mat ... 32.mat, from "
                     "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/.")
  if limit is not None:
    images, labels = images[:limit], labels[:limit]
  try:
    return storage.Split(images=images, labels=labels, num_classes=10)
  except ValueError as e:
    raise ValueError(f"the affNIST files in {str(folder)!r}: {e}") from e


AFFNIST_STYLE = Dataset(
    name="affnist_style", description="affNIST-style test set: the 10,000 MNIST test digits "
    "under 32 random affine transformations each on 40x40, built on the fly (ranges: "
    "capsjax/data/affnist.py)", splits=("test",), load=load_mnist,
    size=lambda split, stored: PER_DIGIT * len(stored), builder=style_builder, loss=loss,
    host_batches=False)
AFFNIST = Dataset(
    name="affnist", description="the real affNIST test set (320,000 examples, 40x40) read from "
    "DATA_DIR/affnist/test.mat or test_batches/*.mat", splits=("test",), load=_load_affnist,
    size=lambda split, stored: len(stored), builder=lambda config, split, stored: gather(),
    loss=loss)
