"""Labelled images held as arrays in one `.npz` file, trained on as `--dataset arrays:PATH`.

What `capsjax.fit(train=..., test=...)` writes into its workdir (WORKDIR/arrays.npz) from a
notebook's NumPy arrays, and what an image folder is cached as once decoded
(`capsjax.data.folder`). The file holds both splits:

    train_images [N, H, W, C] uint8 (0..255) or float32 in [0, 1], train_labels [N] int32,
    test_images  [M, H, W, C] (the same dtype and shape), test_labels [M] int32,
    num_classes () int, class_names [K] str (empty: unnamed), format () int (FORMAT).

A run records the file's absolute path, so `capsjax eval`, `viz` and a resume read the same
examples. Training examples go through the run's augmentation like MNIST's
(`capsjax.data.augment`; by default random shifts of up to `max_shift` px).
"""

import os
from pathlib import Path

import numpy as np

from capsjax.data import storage
from capsjax.data.dataset import Dataset
from capsjax.data.mnist import builder, loss

PREFIX = "arrays:"
FORMAT = 1
_SPLITS = ("train", "test")


def write(path: str | os.PathLike, train: storage.Split, test: storage.Split) -> Path:
  """Writes both splits to `path` (.npz) atomically (a temporary file renamed into place).

  Returns:
    the file's absolute path.

  Raises:
    ValueError: (one line) the splits differ in image shape, dtype or class count or class
      names.
  """
  check_pair(train, test)
  path = Path(path).expanduser().absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  names = np.asarray(train.class_names or (), dtype=str)
  with open(temporary, "wb") as f:
    np.savez(f, train_images=train.images, train_labels=train.labels, test_images=test.images,
             test_labels=test.labels, num_classes=np.int64(train.num_classes),
             class_names=names, format=np.int64(FORMAT))
  os.replace(temporary, path)
  return path


def check_pair(train: storage.Split, test: storage.Split) -> None:
  """Raises ValueError (one line) unless `train` and `test` are splits of one dataset: the same
  image shape (H, W, C), dtype, class count and class names."""
  if train.images.shape[1:] != test.images.shape[1:]:
    raise ValueError(f"train images are {'x'.join(map(str, train.images.shape[1:]))} but test "
                     f"images {'x'.join(map(str, test.images.shape[1:]))}; expected one [H, W, "
                     "C] for both.")
  if train.images.dtype != test.images.dtype:
    raise ValueError(f"train images are {train.images.dtype} but test images "
                     f"{test.images.dtype}; expected one dtype for both.")
  if (train.num_classes, train.class_names) != (test.num_classes, test.class_names):
    raise ValueError(f"train and test disagree on the classes ({train.num_classes} vs "
                     f"{test.num_classes} classes, names {train.class_names} vs "
                     f"{test.class_names}).")


def read(path: str | os.PathLike, split: str, limit: int | None = None) -> storage.Split:
  """Split `split` ("train" or "test") of the file at `path` (its first `limit` examples).

  Raises:
    ValueError: (one line) a missing or unreadable file, one of another layout or format, or
      examples `storage.Split` refuses.
  """
  path = Path(path).expanduser()
  if split not in _SPLITS:
    raise ValueError(f"an arrays dataset has splits train and test, got {split!r}.")
  if not path.is_file():
    raise ValueError(f"arrays file {str(path)!r} does not exist; expected an .npz written by "
                     "capsjax.fit or an image folder's cache.")
  try:
    with np.load(path, allow_pickle=False) as contents:
      if int(contents["format"]) != FORMAT:
        raise ValueError(f"format {int(contents['format'])}, expected {FORMAT}")
      images = contents[f"{split}_images"]
      labels = contents[f"{split}_labels"]
      num_classes = int(contents["num_classes"])
      names = tuple(str(n) for n in contents["class_names"])
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f"could not read arrays file {str(path)!r}: {e}") from e
  if limit is not None:
    images, labels = images[:limit], labels[:limit]
  try:
    return storage.Split(images, labels, num_classes, names or None)
  except ValueError as e:
    raise ValueError(f"arrays file {str(path)!r}, {split} split: {e}") from e


def dataset(name: str) -> Dataset:
  """The `Dataset` of `name` = "arrays:PATH" (PATH: an .npz file as `write` writes it).

  Raises:
    ValueError: `name` does not start with "arrays:" or names no path.
  """
  if not name.startswith(PREFIX) or not name[len(PREFIX):]:
    raise ValueError(f"an arrays dataset is named arrays:PATH, got {name!r}.")
  path = Path(name[len(PREFIX):]).expanduser()
  return Dataset(name=name, description=f"the arrays in {str(path)!r} (capsjax.fit)",
                 splits=_SPLITS, load=lambda split, data_dir, limit: read(path, split, limit),
                 size=lambda split, stored: len(stored), builder=builder, loss=loss,
                 uses_augmentation=True, reads_data_dir=False)
