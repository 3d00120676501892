"""The datasets the training loop can train and evaluate on, by name (see `dataset.Dataset`):
`mnist`, `fashion_mnist`, `multimnist` (§6) and `expanded_mnist` (§5.2) to train on;
`smallnorb` (§7, as the official code reads it); `affnist_style` and `affnist` (§5.2) to
evaluate on; and a user's own data by a prefixed name:

- `tfds:NAME[:VERSION]`: any TFDS image-classification dataset of the data dir (`tfds_sets`);
- `folder:PATH`: a folder of images, one sub-folder per class (`folder`);
- `arrays:PATH`: the arrays `capsjax.fit` was given, as it stored them (`arrays`).
"""

from pathlib import Path
from typing import Any

from capsjax.data import arrays, folder, storage, tfds_sets
from capsjax.data.affnist import AFFNIST as _AFFNIST
from capsjax.data.affnist import AFFNIST_STYLE as _AFFNIST_STYLE
from capsjax.data.dataset import (Dataset, ExampleBuilder, check_test_examples, gather,
                                  input_shape, subset)
from capsjax.data.expanded_mnist import EXPANDED_MNIST as _EXPANDED_MNIST
from capsjax.data.mnist import FASHION_MNIST as _FASHION_MNIST
from capsjax.data.mnist import MNIST as _MNIST
from capsjax.data.multimnist import MULTIMNIST as _MULTIMNIST
from capsjax.data.smallnorb import SMALLNORB as _SMALLNORB

_DATASETS = {d.name: d for d in (_MNIST, _FASHION_MNIST, _MULTIMNIST, _EXPANDED_MNIST,
                                 _SMALLNORB, _AFFNIST_STYLE, _AFFNIST)}
# The prefixed names of a user's own data: prefix -> make(name, config) -> Dataset.
_OWN_DATA = {
    tfds_sets.PREFIX: lambda name, config: tfds_sets.dataset(
        name, getattr(config, "image_size", None)),
    folder.PREFIX: lambda name, config: folder.dataset(
        name, getattr(config, "image_size", None), getattr(config, "test_fraction", None)),
    arrays.PREFIX: lambda name, config: arrays.dataset(name),
}
OWN_DATA_FORMS = ("tfds:NAME[:VERSION]", "folder:PATH", "arrays:PATH")


def available(split: str | None = None) -> list[str]:
  """The registered dataset names (those with `split`, if given); a user's own data is named by
  the forms OWN_DATA_FORMS besides."""
  return [name for name, d in _DATASETS.items() if split is None or split in d.splits]


def get(name: str, split: str | None = None, config: Any = None) -> Dataset:
  """The `Dataset` called `name` (one that has `split`, if given); ValueError (one line, naming
  the choices) otherwise.

  `config` (a TrainConfig, or None for the defaults) gives the data settings a user's own data
  takes (`image_size`, `test_fraction`).
  """
  prefix = next((p for p in _OWN_DATA if isinstance(name, str) and name.startswith(p)), None)
  if prefix is not None:
    chosen = _OWN_DATA[prefix](name, config)
  elif name in _DATASETS:
    chosen = _DATASETS[name]
  else:
    raise ValueError(f"unknown dataset {name!r}; expected one of "
                     f"{', '.join(available(split) + list(OWN_DATA_FORMS))}.")
  if split is not None and split not in chosen.splits:
    raise ValueError(f"dataset {name!r} has no {split} split (only "
                     f"{', '.join(chosen.splits)}); expected one of "
                     f"{', '.join(available(split))}.")
  return chosen


def data_dir_for(dataset: Dataset, data_dir, recorded=None):
  """The absolute TFDS data dir `dataset` reads (`storage.resolve_data_dir(data_dir,
  recorded)`: `data_dir`, else $TFDS_DATA_DIR, else `recorded`); None for a set that reads none
  (an image folder, an arrays file). ValueError as `resolve_data_dir`."""
  return storage.resolve_data_dir(data_dir, recorded) if dataset.reads_data_dir else None


def canonical(name: str) -> str:
  """`name` with the path of a folder: or arrays: dataset made absolute (against the current
  directory, `~` expanded), so a run's record reads the same files from anywhere."""
  for prefix in (folder.PREFIX, arrays.PREFIX):
    if isinstance(name, str) and name.startswith(prefix) and name[len(prefix):]:
      return prefix + str(Path(name[len(prefix):]).expanduser().absolute())
  return name


__all__ = ["Dataset", "ExampleBuilder", "OWN_DATA_FORMS", "available", "canonical",
           "check_test_examples", "data_dir_for", "gather", "get", "input_shape", "subset"]
