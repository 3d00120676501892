"""The networks the training loop can train, by name: `capsnet` (the paper's CapsNet, default),
`baseline` (the paper's baseline CNN, §5) and `efficient_capsnet` (Mazzia et al. 2021). See
`arch.Arch` for what each provides."""

import inspect
from typing import Any

from capsjax.nn.objective import LossFn, Losses, Outputs, PRECISIONS, compute_dtype
from capsjax.train.archs.arch import Arch
from capsjax.train.archs.baseline import ARCH as _BASELINE
from capsjax.train.archs.capsnet import ARCH as _CAPSNET
from capsjax.train.archs.efficient_capsnet import ARCH as _EFFICIENT

DEFAULT = "capsnet"
_ARCHS = {a.name: a for a in (_CAPSNET, _BASELINE, _EFFICIENT)}

# Constructor arguments set by the data (input_shape, num_classes) or by the loop.
_NOT_OPTIONS = ("self", "rngs", "input_shape", "num_classes", "vote_chunk_size", "dtype")


def available() -> list[str]:
  """The registered network names."""
  return list(_ARCHS)


def get(name: str) -> Arch:
  """The `Arch` called `name`.

  Raises:
    ValueError: (one line, naming the choices) `name` is not registered.
  """
  if name not in _ARCHS:
    raise ValueError(f"unknown arch {name!r}; expected one of {', '.join(_ARCHS)}.")
  return _ARCHS[name]


def of_settings(settings: dict[str, Any]) -> Arch:
  """The `Arch` of a run's recorded model settings (runs from before `arch` existed: CapsNet)."""
  return get(settings.get("arch", DEFAULT))


def takes(name: str, argument: str) -> bool:
  """Whether the network `name`'s constructor takes keyword `argument` (e.g. vote_chunk_size)."""
  return argument in inspect.signature(get(name).model_class.__init__).parameters


def model_options(name: str = DEFAULT) -> dict[str, Any]:
  """{option: default} of the constructor arguments that `TrainConfig.model` may set."""
  arch = get(name)
  params = inspect.signature(arch.model_class.__init__).parameters
  return {k: p.default for k, p in params.items()
          if k not in _NOT_OPTIONS and k not in arch.config_keys}


__all__ = ["Arch", "DEFAULT", "LossFn", "Losses", "Outputs", "PRECISIONS", "available",
           "compute_dtype", "get", "model_options", "of_settings", "takes"]
