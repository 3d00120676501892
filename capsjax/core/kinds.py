"""Whether a value may stand where a default does: the one type rule for routing options,
network settings and the configs read back from checkpoints."""

import numbers
from typing import Any

import numpy as np


def is_bool(x: Any) -> bool:
  """Whether `x` is a Python or numpy bool (which `numbers.Integral` would also match)."""
  return isinstance(x, (bool, np.bool_))


def same_kind(value: Any, default: Any) -> bool:
  """`value` may stand where `default` does: bools only for bools; ints for ints and floats."""
  if is_bool(default) or is_bool(value):
    return is_bool(default) and is_bool(value)
  if isinstance(default, numbers.Integral):
    return isinstance(value, numbers.Integral)
  if isinstance(default, numbers.Real):
    return isinstance(value, numbers.Real)
  return isinstance(value, type(default))


def kind_name(default: Any) -> str:
  """How the kind of `default` reads in an error message ("a bool", "an int", "a float")."""
  if is_bool(default):
    return "a bool"
  if isinstance(default, numbers.Integral):
    return "an int"
  if isinstance(default, numbers.Real):
    return "a float"
  return f"a value of type {type(default).__name__}"
