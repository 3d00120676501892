"""Training augmentations by name: pure JAX `Transform`s `(key, images float [B,H,W,C],
labels) -> (images, labels)` that run inside the compiled step (`capsjax.data.dataset.gather`).

One module per augmentation, each registered here with what builds it from a run's
`TrainConfig`; `TrainConfig.augmentation` (`capsjax train --augmentation NAME`) picks one for
the sets that take one (MNIST, Fashion-MNIST):

- `shift`: the 2017 paper's random shift of up to `max_shift` px (§5; `shift.py`);
- `efficient_capsnet`: the official Efficient-CapsNet MNIST pipeline (random rotation, shift
  within the digit's margins, horizontal squish, erased 4x4 patch; `efficient_mnist.py`);
- `none`: the images unchanged.
"""

from typing import Any, Callable

from capsjax.data.augment import efficient_mnist
from capsjax.data.augment.shift import random_shift, random_shift_batch, shift_transform

# name -> (one line for listings, make(config) -> Transform or None).
_AUGMENTATIONS: dict[str, tuple[str, Callable[[Any], Callable | None]]] = {
    "shift": ("random shift of up to max_shift px, zero fill (Sabour et al. 2017, §5)",
              lambda config: shift_transform(config.max_shift) if config.max_shift else None),
    "efficient_capsnet": ("rotation, shift within the margins, squish, erased patch "
                          "(official Efficient-CapsNet MNIST pipeline)",
                          lambda config: efficient_mnist.transform),
    "none": ("the images unchanged", lambda config: None),
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


def training_transform(config: Any) -> Callable | None:
  """The `Transform` of `config.augmentation` for a run's `TrainConfig`; None: no transform."""
  check(config.augmentation)
  return _AUGMENTATIONS[config.augmentation][1](config)


__all__ = ["DEFAULT", "available", "check", "describe", "random_shift", "random_shift_batch",
           "shift_transform", "training_transform"]
