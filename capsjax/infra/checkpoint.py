"""Orbax checkpoints of {model + optimizer state, step, RNG seed, config} in `workdir/checkpoints`.

The RNG state is the run seed: each step's keys are its named streams folded by the step
(`capsjax.core.streams.at_step`) and the data order is a function of (seed, step), so (seed, step)
restores both.

Every checkpoint carries `capsjax_files.json` (size and CRC-32 of each file), written inside
Orbax's temporary directory just before its atomic rename; a restore checks it first, so a
truncated or overwritten file is reported by name instead of being read as wrong numbers.

A save checks the free space first (the previous checkpoint's size, or the arrays' size for the
first) and stops before starting a write that cannot fit. A save that fails all the same (disk
full, read-only, workdir gone) raises one-line `StorageError` and removes its temporary folder;
the complete checkpoints are never touched.

In a multi-process run (`capsjax.infra.distributed`) every process calls `save` and `restore`, which
Orbax turns into collective writes and reads (the replicated state is written by process 0, the
manifest after every process has finished); files are removed or moved by process 0 alone.
What could look different from different processes is decided by process 0 and broadcast
(`distributed.decide`): the checks before a save (the workdir still there, free space) and which
checkpoint is the newest good one, so that all take the same branch, or all raise the same error.
"""

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from capsjax.infra import distributed, hooks
from capsjax.infra.workdir import NO_SPACE, StorageError, free_bytes, megabytes, os_error_reason

MANIFEST = "capsjax_files.json"
TMP_MARKER = ".orbax-checkpoint-tmp"
META_FILE = Path("meta") / "metadata"  # the JSON of the "meta" item (Orbax's file name)


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
      hooks.installed().files_written(int(final.name), tmp)
      (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp)))
      hooks.installed().before_rename(int(final.name))
    await super().finalize()


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:300]


@contextlib.contextmanager
def _held_background_errors():
  """Holds what Orbax's background threads report about a failed write on top of the exception
  the save raises: absl ERROR records with tracebacks, and "RuntimeError: Event loop is closed"
  from TensorStore's callbacks for the writes still in flight (Orbax's loop is gone), one
  traceback each, during the save and for a while after it. If the save succeeds, what was held
  is passed on; if it fails, the records are dropped and so are closed-loop reports, and
  asyncio's reports of the save's never-retrieved write tasks, from then on.
  """
  records, unraisable = [], []
  logger = logging.getLogger("absl")

  def hold(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      records.append(record)
      return False
    return True

  previous_hook = sys.unraisablehook
  logger.addFilter(hold)
  sys.unraisablehook = unraisable.append
  try:
    yield
  except BaseException:
    sys.unraisablehook = previous_hook
    for args in unraisable:
      if not _is_closed_loop_report(args):
        previous_hook(args)
    _drop_closed_loop_reports()
    logging.getLogger("asyncio").addFilter(_unretrieved_task_report)
    raise
  finally:
    logger.removeFilter(hold)
  sys.unraisablehook = previous_hook
  for record in records:
    logger.handle(record)
  for args in unraisable:
    previous_hook(args)


def _is_closed_loop_report(args) -> bool:
  return (isinstance(args.exc_value, RuntimeError)
          and str(args.exc_value) == "Event loop is closed")


def _unretrieved_task_report(record: logging.LogRecord) -> bool:
  """False (drop) for asyncio's "Task exception was never retrieved" (or "Future ...") about
  the writes of a failed save, logged whenever the task or future is collected, possibly after
  the one error line."""
  return not str(record.msg).startswith(("Task exception was never retrieved",
                                         "Future exception was never retrieved"))


def _drop_closed_loop_reports() -> None:
  """From now on, drops the closed-loop reports of a failed save; the rest pass through."""
  previous = sys.unraisablehook
  if getattr(previous, "_capsjax_drops_closed_loop", False):
    return

  def hook(args):
    if not _is_closed_loop_report(args):
      previous(args)

  hook._capsjax_drops_closed_loop = True
  sys.unraisablehook = hook


def manifest_damage(step_dir: Path) -> str | None:
  """What is wrong with the files of the checkpoint in `step_dir` by its manifest (sizes and
  CRC-32s): "file NAME is missing", "... has N bytes, expected M ...", "... does not match its
  checksum ...", or "its manifest is unreadable ..."; None if they match (or there is no
  manifest: a checkpoint written before manifests existed). Reads files only: no Orbax, no
  collective, so one process can check alone."""
  manifest_path = step_dir / MANIFEST
  if not manifest_path.exists():
    return None
  try:
    expected = json.loads(manifest_path.read_text())
  except ValueError as e:
    return f"its {MANIFEST} is unreadable ({_first_line(e)})"
  for name, (size, crc) in expected.items():
    path = step_dir / name
    if not path.is_file():
      return f"file {name} is missing"
    if path.stat().st_size != size:
      return (f"file {name} has {path.stat().st_size} bytes, expected {size} (truncated or "
              "overwritten)")
    if _crc32(path) != crc:
      return f"file {name} does not match its checksum (corrupted)"
  return None


def directory_bytes(path: Path) -> int:
  """Total size of the files under `path`."""
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_finite(pure_state: dict, what: str) -> None:
  """Raises NonFiniteError naming the arrays of `pure_state` that hold NaN or Inf."""
  bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(pure_state)
         if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all()]
  if bad:
    raise NonFiniteError(f"{what}: non-finite values in {', '.join(bad[:3])}"
                         f"{' and more' if len(bad) > 3 else ''}.")


class Checkpointer:
  """Saves and restores an `nnx.State` of (model, optimizer) plus JSON metadata.

  Checkpoints live in WORKDIR/checkpoints/STEP. A context manager: leaving it `close`s.
  """

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, cleanup: bool = False,
               guard: Callable[[], None] | None = None):
    """Opens WORKDIR/checkpoints (created if needed).

    In a multi-process run process 0 alone does the cleanup and the guard's check, and every
    process learns the outcome.

    Args:
      workdir: the run's workdir.
      keep: how many complete checkpoints are kept (older ones are deleted).
      cleanup: delete temporary dirs left by a save that was killed (listed in
        `self.removed_incomplete`); only a writer (train) should, holding the workdir lock.
      guard: runs before each save and may raise StorageError (the workdir lock's check that
        the workdir is still there); None: no check.

    Raises:
      StorageError: with `cleanup`, a temporary dir cannot be removed.
    """
    self.workdir = Path(workdir).absolute()
    self.guard = guard
    self.directory = self.workdir / "checkpoints"
    # A decision is also a synchronisation point: the others wait until process 0 has cleaned.
    self.removed_incomplete: list[str] = (distributed.decide(self._remove_incomplete)
                                          if cleanup else [])
    # Synchronous saves: the train step donates its state buffers, so an async save could read
    # memory that the next step is already overwriting.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False,
                                           temporary_path_class=_ManifestTemporaryPath)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._verified: set[int] = set()

  def _remove_incomplete(self) -> list[str]:
    """Deletes the temporary folders of killed saves; their names. StorageError if one cannot be
    deleted."""
    removed = []
    if self.directory.is_dir():
      for tmp in sorted(self.directory.glob(f"*{TMP_MARKER}*")):
        try:
          shutil.rmtree(tmp)
        except OSError as e:
          raise StorageError(f"could not remove {str(tmp)!r}, an incomplete checkpoint left by "
                             f"an interrupted save: {os_error_reason(e)}") from e
        removed.append(tmp.name)
    return removed

  def latest_step(self) -> int | None:
    """Step of the newest complete checkpoint, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints kept, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: nnx.State, meta: dict[str, Any]) -> None:
    """Writes checkpoint `step` (overwriting nothing; Orbax finalises it atomically).

    A failed save's temporary folder is removed. In a multi-process run process 0 makes the
    checks before the write (workdir, free space) for all processes: all write, or all raise
    its StorageError.

    Args:
      step: the global step, the checkpoint's name.
      state: the (model, optimizer) `nnx.State` (device arrays are fetched to the host).
      meta: JSON-serialisable metadata ("config", "model", "seed"); "step" is added.

    Raises:
      NonFiniteError: an array of `state` holds NaN or Inf; nothing is written.
      StorageError: the checkpoint cannot be written (not enough free space for it, a failed
        write, the workdir gone).
    """
    pure = jax.device_get(nnx.to_pure_dict(state))
    check_finite(pure, f"refusing to write checkpoint {step}")
    needed, free = distributed.decide(lambda: self._check_before_save(step, pure))
    try:
      with _held_background_errors():
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(pure),
            meta=ocp.args.JsonSave({**meta, "step": int(step)})), force=True)
        self.manager.wait_until_finished()
    except Exception as e:  # Orbax/TensorStore wrap OS errors in several exception types
      left = self._remove_temporary(step)
      reason = os_error_reason(e)
      if reason is None:
        raise
      raise StorageError(self._save_failed(step, reason, needed, free, left)) from e

  def _check_before_save(self, step: int, pure: dict) -> tuple[int, int]:
    """(bytes needed, bytes free) for checkpoint `step` of `pure`, after `guard()`; StorageError
    if the workdir is gone or the checkpoint would not fit."""
    try:
      if self.guard is not None:
        self.guard()
      needed = self._bytes_needed(pure)
      free = free_bytes(self.directory)
    except StorageError as e:
      raise StorageError(f"could not save checkpoint {step}: {e}; "
                         f"{self.last_complete_phrase()}") from e
    except OSError as e:
      raise StorageError(self._save_failed(step, os_error_reason(e) or _first_line(e))) from e
    if free < needed and hooks.installed().check_free_space():
      raise StorageError(self._save_failed(step, NO_SPACE, needed, free))
    return needed, free

  def _bytes_needed(self, pure: dict) -> int:
    """About what checkpoint `pure` will take: the newest complete checkpoint's size on disk
    (Orbax compresses), else the arrays' size; plus 5% and 1 MB for metadata."""
    steps = self.all_steps()
    estimate = (directory_bytes(self.directory / str(steps[-1])) if steps else
                sum(np.asarray(x).nbytes for x in jax.tree.leaves(pure)))
    return int(estimate * 1.05) + 1_000_000

  def _remove_temporary(self, step: int) -> list[str]:
    """Deletes the temporary folders of a failed save of `step`; returns those it could not.

    Orbax writes the items of a checkpoint from several threads, and the others may still
    create their folders after one has failed, so this watches for a moment and removes again.
    """
    left: set[str] = set()
    deadline = time.monotonic() + 0.5
    while True:
      for tmp in sorted(self.directory.glob(f"{step}{TMP_MARKER}*")):
        try:
          shutil.rmtree(tmp)
          left.discard(str(tmp))
        except OSError:
          left.add(str(tmp))
      if time.monotonic() > deadline:
        break
      time.sleep(0.05)
    with contextlib.suppress(Exception):
      self.manager.reload()
    return sorted(left)

  def last_complete_step(self) -> int | None:
    """The newest complete checkpoint on disk now (None if none, or the folder is gone)."""
    try:
      return max((int(p.name) for p in self.directory.iterdir() if p.name.isdigit()),
                 default=None)
    except OSError:
      return None

  def last_complete_phrase(self) -> str:
    """"the last complete checkpoint is K" (or that there is none), for error messages."""
    if not self.directory.is_dir():
      return f"{self.directory} is not reachable any more"
    step = self.last_complete_step()
    return ("no complete checkpoint was written" if step is None
            else f"the last complete checkpoint is {step}")

  def _save_failed(self, step: int, reason: str, needed: int | None = None,
                   free: int | None = None, left: list[str] = ()) -> str:
    space = (f" (needs about {megabytes(needed)}, {megabytes(free)} free)"
             if reason == NO_SPACE and needed is not None and free is not None else "")
    leftover = (f"; could not remove the partial {', '.join(left)} (the next run will)"
                if left else "")
    return (f"could not save checkpoint {step} in {str(self.directory)!r}: {reason}"
            f"{space}{leftover}; {self.last_complete_phrase()}")

  def verify(self, step: int) -> None:
    """Checks the files of checkpoint `step` against its manifest (sizes and CRC-32s), once.

    Checkpoints written before the manifest existed are accepted unchecked.

    Raises:
      CheckpointError: a file is missing, truncated or altered, or the manifest is unreadable.
    """
    if step in self._verified:
      return
    damage = manifest_damage(self.directory / str(step))
    if damage is not None:
      raise self._error(step, damage)
    self._verified.add(step)

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of checkpoint `step` (default: latest), after `verify`.

    Raises:
      ValueError: `step` is None and there is no checkpoint.
      CheckpointError: the checkpoint is damaged.
    """
    step = self.resolve_step(step)
    self.verify(step)
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # Orbax/JSON raise many types for damaged files
      raise self._error(step, _first_line(e)) from e

  def restore(self, state: nnx.State, step: int | None = None, *, part: int | None = None
              ) -> tuple[nnx.State, dict]:
    """Fills `state` (a template of the right structure) from checkpoint `step` (default latest).

    `part`: restore only this element of the saved (model, optimizer) pair, `state` being a
    template of that element (0: the model alone, for evaluation; nothing else is read).

    Returns:
      The restored state (`state` itself, filled in place) and the metadata dict.

    Raises:
      ValueError: `step` is None and there is no checkpoint.
      CheckpointError: the checkpoint is damaged (missing, truncated or altered files, or
        contents Orbax cannot read).
    """
    step = self.resolve_step(step)
    self.verify(step)
    pure = nnx.to_pure_dict(state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
    item = (ocp.args.StandardRestore(abstract) if part is None else
            ocp.args.PyTreeRestore({part: abstract}, partial_restore=True))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=item, meta=ocp.args.JsonRestore()))
    except Exception as e:  # tensorstore and Orbax raise many types for damaged files
      raise self._error(step, _first_line(e)) from e
    nnx.replace_by_pure_dict(state, restored["state"] if part is None else
                             restored["state"][part])
    return state, restored["meta"]

  def restore_newest_good(self, state: nnx.State, check_meta: Callable[[dict], None],
                          report: Callable[[str], None] = print
                          ) -> tuple[nnx.State, dict] | None:
    """Restores the newest readable checkpoint; None if there is none at all.

    A damaged checkpoint is moved to `workdir/corrupt_checkpoints/` (kept for inspection),
    reported through `report`, and the previous one is tried. `check_meta(meta)` may raise
    ValueError (for example a different model), which is not a fallback case and propagates.

    In a multi-process run process 0 alone checks the files and the metadata, moves damaged
    checkpoints and reports them; the others are told the step to restore (and the reports,
    passed to their own `report`), and all restore that step together. An error raised by
    process 0's checks is raised on every process.

    Returns:
      (restored state, metadata dict) as `restore`, or None when no checkpoint is left.

    Raises:
      ValueError: raised by `check_meta`.
      StorageError: a damaged checkpoint cannot be moved aside.
    """
    while True:
      step, reports = distributed.decide(lambda: self._newest_good_step(check_meta, report))
      if not distributed.is_main():
        for line in reports:
          report(line)
      if reports:
        self.manager.reload()
      if step is None:
        return None
      self._verified.add(step)  # process 0's verdict on the files holds for every process
      try:
        return self.restore(state, step)
      except CheckpointError as e:  # whole files (or no manifest) that Orbax cannot read
        report(distributed.decide(lambda: self._quarantine(step, e)))
        self.manager.reload()

  def _newest_good_step(self, check_meta: Callable[[dict], None], report: Callable[[str], None]
                        ) -> tuple[int | None, list[str]]:
    """(the newest checkpoint whose files pass `verify` and whose metadata passes `check_meta`,
    or None; the reports of the damaged ones moved aside on the way, each also `report`ed)."""
    reports = []
    for step in reversed(self.all_steps()):
      try:
        self.verify(step)
        check_meta(self._read_meta_file(step))
        return step, reports
      except CheckpointError as e:
        reports.append(self._quarantine(step, e))
        report(reports[-1])
    return None, reports

  def _read_meta_file(self, step: int) -> dict[str, Any]:
    """The metadata of checkpoint `step` read straight from the file Orbax's JsonRestore reads:
    by this process alone (Orbax's restore waits for all processes at its end)."""
    path = self.directory / str(step) / META_FILE
    try:
      return json.loads(path.read_text())
    except FileNotFoundError as e:
      raise self._error(step, f"File {path} not found.") from e
    except (OSError, ValueError) as e:
      raise self._error(step, _first_line(e)) from e

  def _quarantine(self, step: int, error: CheckpointError) -> str:
    """Moves damaged checkpoint `step` to corrupt_checkpoints/; the warning line saying so.
    StorageError if it cannot be moved."""
    target = self.workdir / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
      target.parent.mkdir(exist_ok=True)
      shutil.move(self.directory / str(step), target)
    except OSError as e:
      raise StorageError(f"could not move damaged checkpoint {step} to {str(target)!r}: "
                         f"{os_error_reason(e) or _first_line(e)} ({error})") from e
    return f"Warning: {error} Moved it to {target}; falling back to the previous checkpoint."

  def _error(self, step: int, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {step} in {str(self.directory)!r} cannot be restored: "
                           f"{why.rstrip('.')}.")

  def resolve_step(self, step: int | None) -> int:
    """`step`, or the newest complete checkpoint's when None.

    Raises:
      ValueError: `step` is None and there is no complete checkpoint.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise ValueError(f"no checkpoint in {str(self.directory)!r}; train first "
                       "(capsjax train --workdir ...).")
    return step

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    if exc[0] is None:
      self.close()
    else:  # already failing: a second error from closing would hide the first
      with contextlib.suppress(Exception):
        self.close()
