"""The package's layout: layers that import only downward, no import circle (imports inside
functions count), no two modules of one name, and `capsjax.nn` importable without the training
stack."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "capsjax"

# Each layer and the layers it may import. The top (api, cli, viz, images, the package's
# __init__) may import everything.
LAYERS = {
    "core": set(),
    "routing": {"core"},
    "nn": {"core", "routing"},
    "infra": {"core"},
    "data": {"core", "nn", "infra"},
    "train": {"core", "routing", "nn", "infra", "data"},
}


def _modules() -> dict[str, Path]:
  """{dotted name: path} of every module of the package (a package by its __init__.py)."""
  found = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    found[".".join(parts)] = path
  return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
  """The capsjax modules `path` imports anywhere in its body (functions included)."""
  is_package = path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split(".")[0] == "capsjax")
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from its own package
        base = name.split(".")[:len(name.split(".")) - node.level + is_package]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ""
      if source.split(".")[0] != "capsjax":
        continue
      for a in node.names:  # a submodule if there is one of that name, else a name in `source`
        found.add(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source)
  return found & set(modules)


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, name, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_circle():
  graph = _graph()
  state, stack, circles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        circles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
  assert len(graph) > 50  # every module was read


def test_layers_import_only_downward():
  wrong = []
  for module, imported in sorted(_graph().items()):
    layer = _layer(module)
    if layer is None:
      continue  # the top imports anything
    for target in sorted(imported):
      other = _layer(target)
      if other != layer and other not in LAYERS[layer]:
        wrong.append(f"{module} ({layer}) imports {target} ({other or 'the top'})")
  assert not wrong, "; ".join(wrong)


def test_no_two_modules_of_one_name():
  by_name = {}
  for path in PACKAGE.rglob("*.py"):
    if path.name not in ("__init__.py", "__main__.py"):
      by_name.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE.parent)))
  assert {n: p for n, p in by_name.items() if len(p) > 1} == {}


def test_nn_imports_no_training_stack():
  """`import capsjax.nn` (and the routing rules) loads neither Orbax, TFDS, tqdm nor the
  training or data layers."""
  code = ("import json, sys; import capsjax.nn, capsjax.routing; "
          "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('orbax', 'tensorflow_datasets', 'tqdm', 'tensorflow') or m.startswith("
          "('capsjax.train', 'capsjax.data', 'capsjax.infra', 'capsjax.api')))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == []
