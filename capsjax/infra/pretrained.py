"""Pretrained networks shipped with capsjax, in the package's data folder `capsjax/pretrained/`:
for each NAME, `NAME.json` (what the network is, how it was trained, its measured accuracy) and
`NAME.npz` (its parameters and batch-norm statistics, one float32 array per variable, named by
its path in the module, e.g. `convs/0/kernel`).

This module reads and writes those files only; `capsjax.load_pretrained(NAME)` builds the network
from them and `capsjax predict --pretrained NAME` classifies with it. What each was trained on,
and how, is in its record and in docs/results.md; `experiments/export_pretrained.py` makes them
from a training run's workdir.
"""

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

# The shipped files: package data of capsjax (pyproject.toml, [tool.setuptools.package-data]).
DIRECTORY = Path(__file__).resolve().parents[1] / "pretrained"


def available(directory: str | Path = DIRECTORY) -> list[str]:
  """The names of the pretrained networks in `directory` (default: the shipped ones) that have
  both files, sorted."""
  return sorted(p.stem for p in Path(directory).glob("*.json")
                if p.with_suffix(".npz").is_file())


def check(name: str, directory: str | Path = DIRECTORY) -> None:
  """Raises ValueError (one line, naming the ones there are) unless `name` is in `directory`
  (default: the shipped ones)."""
  if not isinstance(name, str) or name not in available(directory):
    names = available(directory)
    raise ValueError(f"unknown pretrained model {name!r}; expected one of "
                     f"{', '.join(names) if names else '(none in ' + str(directory) + ')'}.")


def read(name: str, directory: str | Path = DIRECTORY
         ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(record, arrays) of pretrained network `name`.

  The record holds "config" (the TrainConfig it was trained with, as a dict), "model" (the
  network's settings, as a run records them), "step", "accuracy" ({"test": fraction of the
  10,000 test images, "first_1000": of the first 1,000}), "trained" (date and machine) and
  "source" (how it was made).

  Args:
    name: the network's name.
    directory: where its files are; default: the ones shipped with capsjax.

  Raises:
    ValueError: `name` is not there (`check`), or its files cannot be read.
  """
  check(name, directory)
  directory = Path(directory)
  try:
    record = json.loads((directory / f"{name}.json").read_text())
    with np.load(directory / f"{name}.npz") as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"pretrained model {name!r} cannot be read ({e}); reinstall capsjax.") from e
  return record, arrays


def variable_name(path) -> str:
  """A variable's name in the .npz: its path in the module's state, e.g. `convs/0/kernel`."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif not (isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"):
      parts.append(str(getattr(key, "name", key)))
  return "/".join(parts)


def arrays_of(state) -> dict[str, np.ndarray]:
  """{variable name: numpy array} of an `nnx.State` (or any pytree of arrays)."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {variable_name(path): np.asarray(leaf) for path, leaf in leaves}


def fill(state, arrays: dict[str, np.ndarray], name: str):
  """`state` with every variable that `arrays` names replaced by its array.

  Args:
    state: an `nnx.State` (or pytree) of the network the arrays came from.
    arrays: {variable name: array}, e.g. from `read`.
    name: the pretrained model's name, for error messages.

  Returns:
    (new state, the names of the state's variables that `arrays` does not hold) — a network
    with a decoder filled from a shipped one without it leaves the decoder's variables as they
    were.

  Raises:
    ValueError: an array of `arrays` that the state does not have, or of another shape.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  names = [variable_name(path) for path, _ in leaves]
  extra = sorted(set(arrays) - set(names))
  if extra:
    raise ValueError(f"pretrained model {name!r} has variables this network does not "
                     f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}).")
  new, missing = [], []
  for key, (_, leaf) in zip(names, leaves):
    if key not in arrays:
      missing.append(key)
      new.append(leaf)
      continue
    if tuple(arrays[key].shape) != tuple(leaf.shape):
      raise ValueError(f"pretrained model {name!r}: {key} has shape {arrays[key].shape}, this "
                       f"network's {tuple(leaf.shape)}.")
    new.append(jax.numpy.asarray(arrays[key], leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, new), missing


def write(directory: str | Path, name: str, record: dict[str, Any],
          arrays: dict[str, np.ndarray]) -> tuple[Path, Path]:
  """Writes `directory/name.json` and `directory/name.npz` (float32 arrays, compressed);
  returns their paths."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  json_path, npz_path = directory / f"{name}.json", directory / f"{name}.npz"
  np.savez_compressed(npz_path, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
  json_path.write_text(json.dumps(record, indent=2) + "\n")
  return json_path, npz_path
