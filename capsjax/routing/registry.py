"""Routing rules by name, so a config string (or `capsjax train --routing NAME`) picks the rule.

    @capsjax.routing.register("my_rule")
    def my_rule(u_hat, *, num_iters, temperature=1.0): ...

    capsjax.routing.get("my_rule")      # the function
    capsjax.routing.available()         # ['dynamic', 'em', ..., 'my_rule']

Rules from outside capsjax (plugins) come from two places, both registering with `register`:
installed packages that declare an entry point in the group "capsjax.routing" (imported on the
first lookup by name, once per process; one that fails to import is skipped with a
`RoutingPluginWarning`), and modules named with `load_plugins` (`capsjax train --plugin MODULE`,
`--routing MODULE:NAME`, `TrainConfig.plugins`). Two rules of one name are an error.
"""

import contextlib
import importlib
import importlib.metadata
import inspect
import sys
import warnings
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax

from capsjax.core.errors import one_line
from capsjax.core.kinds import kind_name, same_kind
from capsjax.routing.base import ParamInit, RoutingRule

ENTRY_POINT_GROUP = "capsjax.routing"
BUILT_IN = "built-in"


class RuleInfo(NamedTuple):
  """A registered rule.

  Attributes:
    name: registry name.
    fn: the per-example rule `fn(u_hat, *, num_iters, **options) -> RoutingResult`.
    init_params: creates the rule's learnable parameters (passed to `fn` as keyword options), or
      None for a rule without parameters.
    uses_activations: `fn` takes `activations` [N_in] (the input capsules' activations).
    iterative: `num_iters` changes what `fn` computes (False: one pass; num_iters is ignored).
    paper: what the rule follows (`register(paper=...)`, else the first line of its module's
      docstring).
    source: where it came from: "built-in", "module M" or "entry point 'E' of DIST VERSION".
  """

  name: str
  fn: RoutingRule
  init_params: ParamInit | None
  uses_activations: bool
  iterative: bool
  paper: str = ""
  source: str = BUILT_IN


class RoutingPluginWarning(UserWarning):
  """An installed routing plugin (entry point) failed to import; its rules are not available."""


class DuplicateRuleError(ValueError):
  """Two different functions were registered under one rule name."""


_RULES: dict[str, RuleInfo] = {}
_source: str | None = None  # source of the rules registered now, while a plugin loads
_entry_points_loaded = False
_plugin_error: str | None = None  # a duplicate among the entry points: every lookup raises it
_plugin_modules: list[str] = []  # modules imported by load_plugins, in order


def register(name: str, *, init_params: ParamInit | None = None, uses_activations: bool = False,
             iterative: bool = True, paper: str | None = None
             ) -> Callable[[RoutingRule], RoutingRule]:
  """Decorator that registers a routing rule under `name` and returns it unchanged.

  Args:
    name: the name `get`, `CapsNet(routing=...)` and `capsjax train --routing` accept.
    init_params: `init(key, num_in, num_out, dim) -> {option: array}` for learnable parameters;
      the layer stores them as `nnx.Param`s and passes them to the rule as keyword options.
    uses_activations: the rule takes `activations` [N_in] as a keyword option.
    iterative: False for one-pass rules (they accept and ignore `num_iters`).
    paper: what the rule follows, shown by `capsjax rules` (default: the first line of the
      docstring of the rule's module).

  Returns:
    The decorator `fn -> fn`, which records `fn` as rule `name`.

  Raises:
    ValueError: `name` is not a Python identifier (at the call).
    DuplicateRuleError: a ValueError, when decorating: `name` is taken by another function. The
      same function defined again by the same file (a module run as a script and imported, or
      reloaded) replaces the old one.
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"routing rule name must be a Python identifier, got {name!r}.")

  def decorator(fn: RoutingRule) -> RoutingRule:
    source = _source or _default_source(fn)
    old = _RULES.get(name)
    if old is not None and not _same_definition(old.fn, fn):
      raise DuplicateRuleError(
          f"routing rule {name!r} is already registered by {old.source} ({_where(old.fn)}); "
          f"{source} registers another one ({_where(fn)}): rename one of them or remove one "
          "plugin.")
    if paper is None:
      module_doc = getattr(sys.modules.get(fn.__module__), "__doc__", None)
      described = _first_line(module_doc) or _first_line(fn.__doc__)
    else:
      described = paper
    _RULES[name] = RuleInfo(name, fn, init_params, uses_activations, iterative, described, source)
    return fn

  return decorator


def available() -> list[str]:
  """Names of all registered rules (built-in, installed plugins, loaded plugin modules), sorted."""
  _load_entry_points()
  return sorted(_RULES)


def info(name: str) -> RuleInfo:
  """The `RuleInfo` of rule `name` (installed plugins are loaded on the first lookup).

  Raises:
    ValueError: `name` is not registered; the message lists the available names and what each
      loaded plugin module registers.
    DuplicateRuleError: two installed plugins register the same name.
  """
  _load_entry_points()
  if name not in _RULES:
    hints = [f" Plugin module {m!r} registers: {', '.join(_rules_of_module(m)) or 'no rule'}."
             for m in _plugin_modules]
    raise ValueError(f"unknown routing rule {name!r}; available: {', '.join(available())}."
                     + "".join(hints))
  return _RULES[name]


def get(name: str) -> RoutingRule:
  """The rule function registered as `name` (`RuleInfo.fn`); ValueError as `info`."""
  return info(name).fn


def load_plugins(modules: Sequence[str]) -> None:
  """Imports each of `modules` (once per process), whose `register` calls add their rules.

  Raises:
    ValueError: a name that is not a module name, a module that cannot be found or fails to
      import (both named), or a rule name the module takes from another rule.
  """
  _load_entry_points()
  for module in modules:
    if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
      raise ValueError(f"routing plugin {module!r} is not a module name (dotted Python "
                       "identifiers, e.g. my_package.my_rules).")
    if module in _plugin_modules:
      continue
    with _registering_as(f"module {module}"):
      try:
        importlib.import_module(module)
      except DuplicateRuleError:
        raise
      except ModuleNotFoundError as e:
        if e.name is not None and (module + ".").startswith(e.name + "."):
          raise ValueError(f"routing plugin module {module!r} not found (no module named "
                           f"{e.name!r}): install it or put its folder on PYTHONPATH.") from None
        raise ValueError(f"routing plugin module {module!r} failed to import: "
                         f"{_exception_line(e)}") from e
      except Exception as e:  # the plugin's own code failed: name it, keep one line
        raise ValueError(f"routing plugin module {module!r} failed to import: "
                         f"{_exception_line(e)}") from e
    _plugin_modules.append(module)


def describe(name: str) -> dict[str, Any]:
  """What `capsjax rules` shows of rule `name`.

  Returns:
    {"source", "paper", "iterative", "uses_activations", "options": {option: default, or
      "(required)"}, "parameters": {parameter: shape, e.g. ["N_in", "N_out"]}}.

  Raises:
    ValueError: `name` is not registered (`info`).
  """
  rule = info(name)
  return {"source": rule.source, "paper": rule.paper, "iterative": rule.iterative,
          "uses_activations": rule.uses_activations, "options": _options(rule),
          "parameters": _param_shapes(rule)}


def check_options(name: str, options: Mapping[str, Any]) -> None:
  """Checks `options` (keyword name -> value) against the keyword options of rule `name`.

  A value must be of its default's kind (a bool for a bool default; an int, not a bool, for an
  int; an int or float for a float); options without a default or with default None are not
  type-checked. Learnable parameters and `activations` are supplied by the layer, so they are
  not options. A rule taking **kwargs accepts anything.

  Raises:
    ValueError: an unknown rule, an option the rule does not take (the message lists those it
      takes), or a value not of its default's kind.
  """
  rule = info(name)
  params = inspect.signature(rule.fn).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return
  accepted = sorted(_options(rule))
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"routing rule {name!r} does not take option(s) {', '.join(unknown)}; it "
                     f"takes: {', '.join(accepted) or 'no options'}.")
  for key, value in options.items():
    default = params[key].default
    expected = _type_name(default)
    if expected and not same_kind(value, default):
      raise ValueError(f"routing option {key} of rule {name!r} must be {expected} (default "
                       f"{default!r}), got {value!r}.")


def _type_name(default: Any) -> str | None:
  """How an option's expected type reads in an error ("a bool"); None: not checked."""
  if default is inspect.Parameter.empty or default is None:
    return None
  return kind_name(default)


def init_params(name: str, key: jax.Array, num_in: int, num_out: int, dim: int
                ) -> dict[str, jax.Array]:
  """The learnable parameters of rule `name` for a votes layer of [num_in, num_out, dim].

  Args:
    name: a registered rule.
    key: PRNG key for the rule's `init_params`.
    num_in: input capsules N_in.
    num_out: output capsules N_out.
    dim: output capsule dimension D.

  Returns:
    {option name: array} passed to the rule as keyword options ({} for a rule without any).
  """
  rule = info(name)
  return {} if rule.init_params is None else dict(rule.init_params(key, num_in, num_out, dim))


def _options(rule: RuleInfo) -> dict[str, Any]:
  """{option: default} of the rule's keyword-only arguments the user sets (in signature order)."""
  # Supplied by the layer: activations (rules registered with uses_activations) and bias (the
  # official variant's DigitCaps bias, for rules that accept one).
  supplied = {"num_iters", "activations", "bias"} | set(_param_shapes(rule))
  return {k: "(required)" if p.default is inspect.Parameter.empty else p.default
          for k, p in inspect.signature(rule.fn).parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in supplied}


# Sizes unlikely to occur by themselves, so a parameter's shape can be written with their names.
_PROBE_SIZES = {"N_in": 1031, "N_out": 107, "D": 13}


def _param_shapes(rule: RuleInfo) -> dict[str, list[int | str]]:
  """{parameter: shape in terms of N_in, N_out, D} of the rule's learnable parameters."""
  if rule.init_params is None:
    return {}
  shapes = jax.eval_shape(lambda k: rule.init_params(k, *_PROBE_SIZES.values()),
                          jax.random.key(0))
  names = {size: name for name, size in _PROBE_SIZES.items()}
  return {k: [names.get(d, d) for d in s.shape] for k, s in shapes.items()}


def _rules_of_module(module: str) -> list[str]:
  return sorted(r.name for r in _RULES.values()
                if r.source == f"module {module}" or r.fn.__module__ == module)


def _load_entry_points() -> None:
  """Imports the installed "capsjax.routing" entry points, the first time only."""
  global _entry_points_loaded, _plugin_error
  if _plugin_error is not None:
    raise DuplicateRuleError(_plugin_error)
  if _entry_points_loaded:
    return
  _entry_points_loaded = True  # first, so a plugin that looks rules up does not load again
  for entry_point in _entry_points():
    source = _entry_point_source(entry_point)
    try:
      with _registering_as(source):
        entry_point.load()
    except DuplicateRuleError as e:
      _plugin_error = str(e)
      raise
    except Exception as e:  # a broken plugin must not take the other rules down with it
      warnings.warn(f"routing plugin {source} ({entry_point.value}) failed to import and is "
                    f"skipped: {_exception_line(e)}", RoutingPluginWarning, stacklevel=3)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
  return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_source(entry_point: importlib.metadata.EntryPoint) -> str:
  """"entry point 'NAME' of DIST VERSION" (the entry point's value if the metadata lacks it)."""
  try:
    dist = entry_point.dist
    label = f"{dist.metadata['Name']} {dist.version}" if dist.metadata["Name"] else None
  except Exception:  # no distribution, or metadata that cannot be read
    label = None
  return f"entry point {entry_point.name!r} of {label or entry_point.value}"


@contextlib.contextmanager
def _registering_as(source: str) -> Iterator[None]:
  """Rules registered inside come from `source`; if the block fails, they are removed again."""
  global _source
  before, outer = set(_RULES), _source
  _source = source
  try:
    yield
  except BaseException:
    for name in set(_RULES) - before:
      del _RULES[name]
    raise
  finally:
    _source = outer


def _default_source(fn: Callable) -> str:
  module = getattr(fn, "__module__", None) or "?"
  return BUILT_IN if module.startswith("capsjax.") else f"module {module}"


def _same_definition(old: Callable, new: Callable) -> bool:
  """The same function, or the same definition executed again (same file and qualified name)."""
  file = lambda fn: getattr(getattr(fn, "__code__", None), "co_filename", None)
  qualname = lambda fn: getattr(fn, "__qualname__", None)
  return old is new or (file(old) is not None and file(old) == file(new)
                        and qualname(old) == qualname(new))


def _where(fn: Callable) -> str:
  return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _first_line(doc: str | None) -> str:
  return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


def _exception_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {one_line(e)}"
