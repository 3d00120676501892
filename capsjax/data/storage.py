"""Stored splits: a TFDS data_dir (array_record, read with `tfds.data_source`; no TensorFlow)
read into memory, and the checks every stored or user-given batch passes.

Each split is decoded once into uint8 numpy arrays held in memory (MNIST: 47 MB), so batches are
plain fancy indexing: no per-step PNG decoding. Any TFDS image-classification dataset in the
data dir can be read: its image and class-label features, image size, channels, class count and
class names come from its own metadata (`load_split`).
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from capsjax.data import resize

# The TFDS datasets capsjax's built-in sets read (any other is read through `tfds:NAME`).
SUPPORTED_DATASETS = ("mnist", "fashion_mnist")
DATA_DIR_ENV = "TFDS_DATA_DIR"


def check_batch(images, labels, num_classes: int) -> None:
  """Raises ValueError (one line naming the problem) unless the batch is usable for training.

  Args:
    images: [B, H, W, C] with B >= 1; uint8 (0..255) or floating point, finite, in [0, 1].
    labels: [B] integers in [0, num_classes).
    num_classes: >= 2.

  Raises:
    ValueError: num_classes not an integer >= 2; images not of rank 4, empty, of another dtype,
      or float with NaN/Inf or values outside [0, 1]; labels not of shape [B], not integers, or
      outside [0, num_classes).
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or \
      num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4:
    raise ValueError(f"images must have shape [B, H, W, C], got shape {images.shape}.")
  if images.shape[0] == 0:
    raise ValueError("empty batch: images holds 0 examples; expected at least one.")
  if np.issubdtype(images.dtype, np.floating):
    nan, inf = int(np.isnan(images).sum()), int(np.isinf(images).sum())
    if nan or inf:
      raise ValueError(f"images contain {nan} NaN and {inf} Inf values; expected finite values "
                       "in [0, 1].")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
      raise ValueError(f"float images must lie in [0, 1], got values from {lo:g} to {hi:g} "
                       "(pass uint8 for 0..255).")
  elif images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (0..255) or floating point in [0, 1], got dtype "
                     f"{images.dtype}.")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels must have shape [{images.shape[0]}] (one class index per image), "
                     f"got shape {labels.shape}.")
  if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values from {labels.min()} "
                     f"to {labels.max()}.")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: images uint8 [N, H, W, C] (or float in [0, 1]), labels int32 [N].

  Checked on construction with `check_batch` (ValueError as there). `len(split)` is N.

  Attributes:
    images: [N, H, W, C] uint8 (0..255) or float in [0, 1].
    labels: [N] integer class indices in [0, num_classes).
    num_classes: the dataset's class count (from its dataset_info), >= 2.
    class_names: the name of each class, in label order (None: unnamed).

  Raises:
    ValueError: what `check_batch` raises, or class_names not num_classes distinct strings.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...] | None = None

  def __post_init__(self):
    check_batch(self.images, self.labels, self.num_classes)
    if self.class_names is not None:
      check_class_names(self.class_names, self.num_classes)

  def __len__(self) -> int:
    return len(self.labels)


def check_class_names(class_names, num_classes: int) -> None:
  """Raises ValueError (one line) unless `class_names` is `num_classes` distinct non-empty
  strings."""
  names = list(class_names) if isinstance(class_names, (list, tuple)) else None
  if names is None or not all(isinstance(n, str) and n for n in names):
    raise ValueError(f"class_names must be a list of non-empty strings, got {class_names!r}.")
  if len(names) != num_classes:
    raise ValueError(f"class_names has {len(names)} names for {num_classes} classes; expected "
                     "one name per class, in label order.")
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"class_names repeats {', '.join(map(repr, repeated))}; expected distinct "
                     "names.")


def resolve_data_dir(data_dir: str | os.PathLike | None,
                     recorded: str | os.PathLike | None = None) -> Path:
  """`data_dir`, else $TFDS_DATA_DIR, else `recorded` (the data dir a run recorded, for commands
  on an existing run), as an absolute path (`~` expanded).

  Every reader of a data dir goes through this. A relative path is made absolute here, against
  the current directory, once: callers keep the result, so links to the record files and later
  reads do not depend on the directory they run in.

  Raises:
    ValueError: neither is set, or the folder does not exist, is empty, or holds no
      DATASET/VERSION/dataset_info.json (not a TFDS data_dir).
  """
  if data_dir is None:
    data_dir = os.environ.get(DATA_DIR_ENV) or recorded
    if not data_dir:
      raise ValueError(f"no data dir given: pass --data-dir DIR or set {DATA_DIR_ENV} to a TFDS "
                       "data_dir that holds mnist/3.0.1 (array_record).")
  path = Path(data_dir).expanduser().absolute()
  if not path.is_dir():
    raise ValueError(f"data dir {str(path)!r} does not exist or is not a directory; expected a "
                     "TFDS data_dir holding mnist/3.0.1 (docs/getting-started.md, \"Getting the "
                     "data\", says how to make one).")
  if not any(path.iterdir()):
    raise ValueError(f"data dir {str(path)!r} is empty; expected a TFDS data_dir with one folder "
                     f"per dataset ({', '.join(SUPPORTED_DATASETS)}).")
  if not any(path.glob("*/*/dataset_info.json")):
    found = ", ".join(sorted(p.name for p in path.iterdir())[:5])
    raise ValueError(f"data dir {str(path)!r} is not a TFDS data_dir: it has no "
                     f"DATASET/VERSION/dataset_info.json (found: {found}).")
  return path


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None,
               limit: int | None = None, *, version: str | None = None,
               image_size: tuple[int, int] | None = None,
               features: tuple[tuple[str, ...], str] | None = None) -> Split:
  """Reads and decodes a whole split (or its first `limit` examples) into memory.

  Args:
    name: a TFDS dataset in the data dir ("mnist", "fashion_mnist", "cifar10", ...) with one
      image feature and one class-label feature (`features_of`).
    split: "train" or "test" (any TFDS split string, e.g. "train[:10%]").
    data_dir: TFDS data_dir; None means $TFDS_DATA_DIR.
    limit: read only the first `limit` examples (tests, smoke runs).
    version: the dataset version ("3.0.1"); None: the newest in the data dir.
    image_size: (H, W) to resize every image to (`capsjax.data.resize`); None: the images'
      own size, which must then be one size (the dataset's declared shape).
    features: (image features, label feature) to read instead of `features_of`'s choice; the
      image features' channels are concatenated (smallNORB's two stereo views: 2 channels).

  Returns:
    Split(images uint8 [N, H, W, C], labels int32 [N], num_classes, class_names).

  Raises:
    ValueError: a bad data dir (`resolve_data_dir`), a dataset or version missing from it (the
      TFDS command that prepares it is named), no image or class-label feature, images of
      several sizes without `image_size`, files that cannot be read or hold another number of
      examples than dataset_info.json declares, an empty split, or labels that do not match the
      declared class count.
  """
  path = resolve_data_dir(data_dir)
  spec = name if version is None else f"{name}:{version}"
  prepare = (f"prepare it on a machine with internet (`tfds build {name}"
             f"{'' if version is None else ':' + version} --data_dir {path} "
             "--file_format array_record`) and copy the folder here; capsjax never downloads")
  if not (path / name).is_dir():
    present = sorted(p.name for p in path.iterdir() if p.is_dir())
    raise ValueError(f"dataset {name!r} is not in data dir {str(path)!r} (found: "
                     f"{', '.join(present) or 'nothing'}); {prepare}.")
  if version is not None and not (path / name / version).is_dir():
    present = sorted(p.name for p in (path / name).iterdir() if p.is_dir())
    raise ValueError(f"version {version} of dataset {name!r} is not in data dir {str(path)!r} "
                     f"(found: {', '.join(present) or 'none'}); {prepare}.")
  import tensorflow_datasets as tfds  # slow import; only when data is actually read

  where = f"{spec!r} split {split!r} in {str(path)!r}"
  try:
    source = tfds.data_source(spec, split=split, data_dir=str(path), download=False)
    image_keys, label_key = features or features_of(source.dataset_info)
    image_keys = (image_keys,) if isinstance(image_keys, str) else image_keys
    _check_record_counts(source.dataset_info, split.split("[")[0])
    n = len(source) if limit is None else min(limit, len(source))
    if n == 0:
      raise ValueError("the split has no examples.")
    records = source.__getitems__(range(n))
    views = lambda r: [np.asarray(r[k]) for k in image_keys]
    pictures = [np.concatenate([v[..., None] if v.ndim == 2 else v for v in views(r)], -1)
                for r in records]
    labels = np.asarray([r[label_key] for r in records], dtype=np.int32)
    num_classes = _declared_num_classes(source.dataset_info, label_key)
    names = tuple(source.dataset_info.features[label_key].names)
  except Exception as e:  # TFDS and array_record raise many types for damaged or missing files
    raise ValueError(f"could not read {where}: {e}") from e
  images = _one_size(pictures, image_size, where)
  try:
    return Split(images=images, labels=labels, num_classes=num_classes,
                 class_names=names if len(names) == num_classes else None)
  except ValueError as e:
    raise ValueError(f"{where} does not match its dataset_info ({num_classes} classes): {e}"
                     ) from e


def features_of(info) -> tuple[str, str]:
  """(image feature, class-label feature) of a TFDS dataset's `info`: "image" and "label" when
  it has them, else its only feature of each kind.

  Raises:
    ValueError: (one line) no image or no class-label feature, or several and none called
      "image" / "label" (the features are named).
  """
  import tensorflow_datasets as tfds

  features = info.features
  kinds = {k: type(f).__name__ for k, f in features.items()}
  chosen = []
  for kind, preferred, what in ((tfds.features.Image, "image", "image"),
                                (tfds.features.ClassLabel, "label", "class-label")):
    keys = [k for k, f in features.items() if isinstance(f, kind)]
    if preferred in keys:
      chosen.append(preferred)
    elif len(keys) == 1:
      chosen.append(keys[0])
    else:
      listed = ", ".join(f"{k} ({v})" for k, v in kinds.items())
      problem = "no" if not keys else f"{len(keys)} ({', '.join(keys)}) and none called {preferred!r}"
      raise ValueError(f"dataset {info.name!r} has {problem} {what} feature; capsjax reads one "
                       f"image and one class label (features: {listed}).")
  return chosen[0], chosen[1]


def _one_size(pictures: list[np.ndarray], image_size, where: str) -> np.ndarray:
  """The decoded images as one uint8 [N, H, W, C] array: resized to `image_size` when given,
  else all of one size (ValueError, one line, naming the sizes otherwise)."""
  pictures = [p[..., None] if p.ndim == 2 else p for p in pictures]
  if image_size is not None:
    return np.stack([resize.resize(p, image_size) for p in pictures]).astype(np.uint8)
  sizes = sorted({p.shape for p in pictures})
  if len(sizes) > 1:
    shown = ", ".join("x".join(map(str, s)) for s in sizes[:4])
    raise ValueError(f"{where} holds images of {len(sizes)} sizes ({shown}"
                     f"{', ...' if len(sizes) > 4 else ''}); choose one with --image-size HxW.")
  return np.stack(pictures).astype(np.uint8)


def _declared_num_classes(info, label_key: str = "label") -> int:
  """The class count in the dataset's own features.json (TFDS takes it from the builder's code,
  so a features.json that disagrees with the labels would otherwise go unnoticed)."""
  features = Path(info.data_dir) / "features.json"
  if features.is_file():
    spec = json.loads(features.read_text())
    label = spec.get("featuresDict", {}).get("features", {}).get(label_key, {})
    if "numClasses" in label.get("classLabel", {}):
      return int(label["classLabel"]["numClasses"])
  return info.features[label_key].num_classes


def _check_record_counts(info, split_name: str) -> None:
  """Raises ValueError if the split's files hold another number of examples than
  dataset_info.json declares (TFDS trusts the declared count and fails mid-read otherwise)."""
  from array_record.python.array_record_module import ArrayRecordReader

  split_info = info.splits[split_name]
  declared = sum(split_info.shard_lengths)
  present = 0
  for f in split_info.filepaths:
    reader = ArrayRecordReader(str(f))
    present += reader.num_records()
    reader.close()
  if present != declared:
    raise ValueError(f"dataset_info.json declares {declared} examples but the files hold "
                     f"{present}.")
