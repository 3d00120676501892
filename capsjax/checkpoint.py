"""Orbax checkpoints of {model + optimizer state, step, RNG seed, config} in `workdir/checkpoints`.

The RNG state is the run seed: per-step keys are `fold_in(key(seed), step)` and the data order is
a function of (seed, step), so (seed, step) restores both.

Every checkpoint carries `capsjax_files.json` (size and CRC-32 of each file), written inside
Orbax's temporary directory just before its atomic rename; a restore checks it first, so a
truncated or overwritten file is reported by name instead of being read as wrong numbers.
"""

import json
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from capsjax import faults

MANIFEST = "capsjax_files.json"
TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(ValueError):
  """A checkpoint that exists but cannot be read back (corrupted, truncated, incomplete)."""


class NonFiniteError(RuntimeError):
  """Training produced a NaN/Inf loss, gradient or parameter."""


def _crc32(path: Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      crc = zlib.crc32(chunk, crc)
  return crc


def _manifest(step_dir: Path) -> dict[str, list[int]]:
  """{relative path: [size, crc32]} of the item files (Orbax rewrites its top-level files)."""
  return {str(p.relative_to(step_dir)): [p.stat().st_size, _crc32(p)]
          for p in sorted(step_dir.rglob("*")) if p.is_file() and p.parent != step_dir}


class _ManifestTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename temporary dir, plus the file manifest written before the rename."""

  async def finalize(self):
    tmp, final = Path(self.get()), Path(self.get_final())
    if final.name.isdigit():  # the step directory (item directories use this class too)
      (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp)))
      faults.pause_in_save(int(final.name))
    await super().finalize()


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:300]


def check_finite(pure_state: dict, what: str) -> None:
  """Raises NonFiniteError naming the arrays of `pure_state` that hold NaN or Inf."""
  bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(pure_state)
         if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all()]
  if bad:
    raise NonFiniteError(f"{what}: non-finite values in {', '.join(bad[:3])}"
                         f"{' and more' if len(bad) > 3 else ''}.")


class Checkpointer:
  """Saves and restores an `nnx.State` of (model, optimizer) plus JSON metadata."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, cleanup: bool = False):
    """`cleanup`: delete temporary dirs left by a save that was killed (listed in
    `self.removed_incomplete`); only a writer (train) should."""
    self.workdir = Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    self.removed_incomplete: list[str] = []
    if cleanup and self.directory.is_dir():
      for tmp in sorted(self.directory.glob(f"*{TMP_MARKER}*")):
        shutil.rmtree(tmp)
        self.removed_incomplete.append(tmp.name)
    # Synchronous saves: the train step donates its state buffers, so an async save could read
    # memory that the next step is already overwriting.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False,
                                           temporary_path_class=_ManifestTemporaryPath)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._verified: set[int] = set()

  def latest_step(self) -> int | None:
    """Step of the newest complete checkpoint, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints kept, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: nnx.State, meta: dict[str, Any]) -> None:
    """Writes checkpoint `step` (overwriting nothing; Orbax finalises it atomically).

    Raises NonFiniteError, writing nothing, if any array of `state` holds NaN or Inf.
    """
    pure = jax.device_get(state.to_pure_dict())
    check_finite(pure, f"refusing to write checkpoint {step}")
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(pure),
        meta=ocp.args.JsonSave({**meta, "step": int(step)})), force=True)
    self.manager.wait_until_finished()

  def verify(self, step: int) -> None:
    """Raises CheckpointError if a file of checkpoint `step` is missing, truncated or altered.

    Checkpoints written before the manifest existed are accepted unchecked.
    """
    if step in self._verified:
      return
    step_dir = self.directory / str(step)
    manifest_path = step_dir / MANIFEST
    if manifest_path.exists():
      try:
        expected = json.loads(manifest_path.read_text())
      except ValueError as e:
        raise self._error(step, f"its {MANIFEST} is unreadable ({_first_line(e)})") from e
      for name, (size, crc) in expected.items():
        path = step_dir / name
        if not path.is_file():
          raise self._error(step, f"file {name} is missing")
        if path.stat().st_size != size:
          raise self._error(step, f"file {name} has {path.stat().st_size} bytes, expected {size} "
                                  "(truncated or overwritten)")
        if _crc32(path) != crc:
          raise self._error(step, f"file {name} does not match its checksum (corrupted)")
    self._verified.add(step)

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of checkpoint `step` (default: latest), after `verify`."""
    step = self._step(step)
    self.verify(step)
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # Orbax/JSON raise many types for damaged files
      raise self._error(step, _first_line(e)) from e

  def restore(self, state: nnx.State, step: int | None = None) -> tuple[nnx.State, dict]:
    """Fills `state` (a template of the right structure) from checkpoint `step` (default latest).

    Returns:
      (restored state, metadata dict). Raises CheckpointError if the checkpoint is damaged.
    """
    step = self._step(step)
    self.verify(step)
    pure = state.to_pure_dict()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # tensorstore and Orbax raise many types for damaged files
      raise self._error(step, _first_line(e)) from e
    nnx.replace_by_pure_dict(state, restored["state"])
    return state, restored["meta"]

  def restore_newest_good(self, state: nnx.State, check_meta: Callable[[dict], None],
                          report: Callable[[str], None] = print
                          ) -> tuple[nnx.State, dict] | None:
    """Restores the newest readable checkpoint; None if there is none at all.

    A damaged checkpoint is moved to `workdir/corrupt_checkpoints/` (kept for inspection),
    reported, and the previous one is tried. `check_meta(meta)` may raise ValueError (for
    example a different model), which is not a fallback case and propagates.
    """
    for step in reversed(self.all_steps()):
      try:
        check_meta(self.read_meta(step))
        return self.restore(state, step)
      except CheckpointError as e:
        moved = self._quarantine(step)
        report(f"Warning: {e} Moved it to {moved}; falling back to the previous checkpoint.")
    return None

  def _quarantine(self, step: int) -> Path:
    target = self.workdir / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(exist_ok=True)
    shutil.move(self.directory / str(step), target)
    self.manager.reload()
    return target

  def _error(self, step: int, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {step} in {str(self.directory)!r} cannot be restored: "
                           f"{why.rstrip('.')}.")

  def _step(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise ValueError(f"no checkpoint in {str(self.directory)!r}; train first "
                       "(capsjax train --workdir ...).")
    return step

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self.manager.close()
