"""Routing rules by name, so a config string (or `capsjax train --routing NAME`) picks the rule.

    @capsjax.routing.register("my_rule")
    def my_rule(u_hat, *, num_iters, temperature=1.0): ...

    capsjax.routing.get("my_rule")      # the function
    capsjax.routing.available()         # ['dynamic', 'em', ..., 'my_rule']
"""

import inspect
import numbers
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from capsjax.routing.base import ParamInit, RoutingRule


class RuleInfo(NamedTuple):
  """A registered rule.

  Attributes:
    name: registry name.
    fn: the per-example rule `fn(u_hat, *, num_iters, **options) -> RoutingResult`.
    init_params: creates the rule's learnable parameters (passed to `fn` as keyword options), or
      None for a rule without parameters.
    uses_activations: `fn` takes `activations` [N_in] (the input capsules' activations).
    iterative: `num_iters` changes what `fn` computes (False: one pass; num_iters is ignored).
  """

  name: str
  fn: RoutingRule
  init_params: ParamInit | None
  uses_activations: bool
  iterative: bool


_RULES: dict[str, RuleInfo] = {}


def register(name: str, *, init_params: ParamInit | None = None, uses_activations: bool = False,
             iterative: bool = True) -> Callable[[RoutingRule], RoutingRule]:
  """Decorator that registers a routing rule under `name` and returns it unchanged.

  Args:
    name: the name `get`, `CapsNet(routing=...)` and `capsjax train --routing` accept.
    init_params: `init(key, num_in, num_out, dim) -> {option: array}` for learnable parameters;
      the layer stores them as `nnx.Param`s and passes them to the rule as keyword options.
    uses_activations: the rule takes `activations` [N_in] as a keyword option.
    iterative: False for one-pass rules (they accept and ignore `num_iters`).
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"routing rule name must be a Python identifier, got {name!r}.")

  def decorator(fn: RoutingRule) -> RoutingRule:
    if name in _RULES and _RULES[name].fn is not fn:
      raise ValueError(f"routing rule {name!r} is already registered (by "
                       f"{_RULES[name].fn.__module__}.{_RULES[name].fn.__qualname__}).")
    _RULES[name] = RuleInfo(name, fn, init_params, uses_activations, iterative)
    return fn

  return decorator


def available() -> list[str]:
  """Names of all registered rules, sorted."""
  return sorted(_RULES)


def info(name: str) -> RuleInfo:
  """The `RuleInfo` of rule `name`; ValueError listing the available names if unknown."""
  if name not in _RULES:
    raise ValueError(f"unknown routing rule {name!r}; available: {', '.join(available())}.")
  return _RULES[name]


def get(name: str) -> RoutingRule:
  """The rule function registered as `name`."""
  return info(name).fn


def check_options(name: str, options: Mapping[str, Any]) -> None:
  """Raises ValueError if rule `name` does not take one of `options` as a keyword, or if a value
  is not of its default's type (a bool for a bool default; an int, not a bool, for an int; an int
  or float for a float; options without a default or with default None are not type-checked).

  Learnable parameters and `activations` are supplied by the layer, so they are not options.
  """
  rule = info(name)
  params = inspect.signature(rule.fn).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  supplied = {"num_iters", "activations"} | set(_param_names(rule))
  accepted = sorted(k for k, p in params.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in supplied)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"routing rule {name!r} does not take option(s) {', '.join(unknown)}; it "
                     f"takes: {', '.join(accepted) or 'no options'}.")
  for key, value in options.items():
    default = params[key].default
    expected = _type_name(default)
    if expected and not _same_kind(value, default):
      raise ValueError(f"routing option {key} of rule {name!r} must be {expected} (default "
                       f"{default!r}), got {value!r}.")


def _is_bool(x: Any) -> bool:
  return isinstance(x, (bool, np.bool_))


def _type_name(default: Any) -> str | None:
  """How an option's expected type reads in an error ("a bool"); None: not checked."""
  if default is inspect.Parameter.empty or default is None:
    return None
  if _is_bool(default):
    return "a bool"
  if isinstance(default, numbers.Integral):
    return "an int"
  if isinstance(default, numbers.Real):
    return "a float"
  return f"of type {type(default).__name__}"


def _same_kind(value: Any, default: Any) -> bool:
  """`value` may stand where `default` does: bools only for bools; ints for ints and floats."""
  if _is_bool(default) or _is_bool(value):
    return _is_bool(default) and _is_bool(value)
  if isinstance(default, numbers.Integral):
    return isinstance(value, numbers.Integral)
  if isinstance(default, numbers.Real):
    return isinstance(value, numbers.Real)
  return isinstance(value, type(default))


def _param_names(rule: RuleInfo) -> list[str]:
  if rule.init_params is None:
    return []
  shapes = jax.eval_shape(lambda k: rule.init_params(k, 2, 2, 2), jax.random.key(0))
  return list(shapes)


def init_params(name: str, key: jax.Array, num_in: int, num_out: int, dim: int
                ) -> dict[str, jax.Array]:
  """The learnable parameters of rule `name` for a [num_in, num_out, dim] votes layer ({} if
  none)."""
  rule = info(name)
  return {} if rule.init_params is None else dict(rule.init_params(key, num_in, num_out, dim))
