"""The datasets the training loop can train and evaluate on, by name (see `dataset.Dataset`):
`mnist`, `fashion_mnist`, `multimnist` (§6) and `expanded_mnist` (§5.2) to train on;
`affnist_style` and `affnist` (§5.2) to evaluate on."""

from capsjax.data.affnist import AFFNIST as _AFFNIST
from capsjax.data.affnist import AFFNIST_STYLE as _AFFNIST_STYLE
from capsjax.data.dataset import (Dataset, ExampleBuilder, check_test_examples, gather,
                                  input_shape, subset)
from capsjax.data.expanded_mnist import EXPANDED_MNIST as _EXPANDED_MNIST
from capsjax.data.mnist import FASHION_MNIST as _FASHION_MNIST
from capsjax.data.mnist import MNIST as _MNIST
from capsjax.data.multimnist import MULTIMNIST as _MULTIMNIST

_DATASETS = {d.name: d for d in (_MNIST, _FASHION_MNIST, _MULTIMNIST, _EXPANDED_MNIST,
                                 _AFFNIST_STYLE, _AFFNIST)}


def available(split: str | None = None) -> list[str]:
  """The registered dataset names (those with `split`, if given)."""
  return [name for name, d in _DATASETS.items() if split is None or split in d.splits]


def get(name: str, split: str | None = None) -> Dataset:
  """The `Dataset` called `name` (one that has `split`, if given); ValueError (one line, naming
  the choices) otherwise."""
  if name not in _DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(available(split))}.")
  if split is not None and split not in _DATASETS[name].splits:
    raise ValueError(f"dataset {name!r} has no {split} split (only "
                     f"{', '.join(_DATASETS[name].splits)}); expected one of "
                     f"{', '.join(available(split))}.")
  return _DATASETS[name]


__all__ = ["Dataset", "ExampleBuilder", "available", "check_test_examples", "gather", "get",
           "input_shape", "subset"]
