"""Per-dataset preprocessing by name: pure JAX functions that run inside the compiled step
(`capsjax.data.dataset.gather`), a training `Transform` `(key, images float [B,H,W,C], labels)
-> (images, labels)` and, for a recipe that also processes test images, a test function
`(images, labels) -> (images, labels)` without randomness.

One module per recipe, each registered here with what builds it from a run's `TrainConfig`;
`TrainConfig.augmentation` (`capsjax train --augmentation NAME`) picks one for the sets that
take one (MNIST, Fashion-MNIST, tfds:, folder: and arrays: sets):

- `shift`: the 2017 paper's random shift of up to `max_shift` px (§5; `shift.py`);
- `efficient_capsnet`: the official Efficient-CapsNet MNIST pipeline (random rotation, shift
  within the digit's margins, horizontal squish, erased 4x4 patch; `efficient_mnist.py`);
- `cifar10`: the official CapsNet CIFAR-10 pipeline (random 24x24 crop, flip, brightness and
  contrast, per-image standardisation; test: the centre crop, standardised; `cifar10.py`);
- `smallnorb`: the official CapsNet smallNORB pipeline (brightness and contrast, random 32x32
  crop of the 48x48 two-view images, standardisation; test: the centre crop; `norb.py`);
- `none`: the images unchanged.
"""

from typing import Any, Callable, NamedTuple

from capsjax.data.augment import cifar10, efficient_mnist, norb
from capsjax.data.augment.shift import random_shift, random_shift_batch, shift_transform


class Preprocessing(NamedTuple):
  """A recipe's two halves (None: the images as they are).

  Attributes:
    train: `(key, images [B,H,W,C] float in [0, 1], labels) -> (images, labels)`, training.
    test: `(images, labels) -> (images, labels)`, evaluation and prediction (no randomness).
  """

  train: Callable | None
  test: Callable | None = None


# name -> (one line for listings, make(config) -> Preprocessing).
_AUGMENTATIONS: dict[str, tuple[str, Callable[[Any], Preprocessing]]] = {
    "shift": ("random shift of up to max_shift px, zero fill (Sabour et al. 2017, §5)",
              lambda config: Preprocessing(
                  shift_transform(config.max_shift) if config.max_shift else None)),
    "efficient_capsnet": ("rotation, shift within the margins, squish, erased patch "
                          "(official Efficient-CapsNet MNIST pipeline)",
                          lambda config: Preprocessing(efficient_mnist.transform)),
    "cifar10": ("random 24x24 crop, flip, brightness, contrast, per-image standardisation; "
                "test: centre 24x24 crop, standardised (official CapsNet CIFAR-10 pipeline)",
                lambda config: Preprocessing(cifar10.train, cifar10.test)),
    "smallnorb": ("brightness, contrast, random 32x32 crop, per-image standardisation; test: "
                  "centre 32x32 crop, standardised (official CapsNet smallNORB pipeline)",
                  lambda config: Preprocessing(norb.train, norb.test)),
    "none": ("the images unchanged", lambda config: Preprocessing(None)),
}
DEFAULT = "shift"


def available() -> list[str]:
  """The registered augmentation names."""
  return list(_AUGMENTATIONS)


def describe(name: str) -> str:
  """One line saying what augmentation `name` does (ValueError as `check`)."""
  check(name)
  return _AUGMENTATIONS[name][0]


def check(name: str) -> None:
  """Raises ValueError (one line, naming the choices) when `name` is not registered."""
  if name not in _AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {name!r}; expected one of {', '.join(available())}.")


def preprocessing(config: Any) -> Preprocessing:
  """The `Preprocessing` of `config.augmentation` for a run's `TrainConfig` (ValueError as
  `check`)."""
  check(config.augmentation)
  return _AUGMENTATIONS[config.augmentation][1](config)


def training_transform(config: Any) -> Callable | None:
  """The training `Transform` of `config.augmentation`; None: no transform."""
  return preprocessing(config).train


__all__ = ["DEFAULT", "Preprocessing", "available", "check", "describe", "preprocessing",
           "random_shift", "random_shift_batch", "shift_transform", "training_transform"]
