"""Points where a test steps into a run: all no-ops unless a test installs hooks of its own.

The fault-tolerance tests (tests/faults.py) install a `RunHooks` subclass that pauses after a
step, sets a weight to NaN before one, or fails a checkpoint's save with ENOSPC, so that the real
loop and the real checkpoint code meet real faults at known steps. Nothing here reads the
environment: a run calls the methods of whatever is installed, by default this module's no-op
`RunHooks`.

Steps are global and 1-based, as in checkpoint names: step N is the N-th training step.
"""

from pathlib import Path
from typing import Any, Callable


class RunHooks:
  """The hook points of a run; every method here does nothing."""

  def chunk_ends(self) -> set[int]:
    """Steps after which a chunk of training steps (several per dispatch) must end, so that
    `before_step` and `after_step` see those steps."""
    return set()

  def before_step(self, state: Any, step: int) -> Any:
    """The training state to run step `step` (and the rest of its chunk) from: `state`."""
    return state

  def after_step(self, step: int, stop_requested: Callable[[], bool]) -> None:
    """Called after the chunk ending at step `step`; `stop_requested()` is True once a
    SIGINT/SIGTERM has arrived."""

  def files_written(self, step: int, temporary: Path) -> None:
    """Called in the save of checkpoint `step` once its files are in the `temporary` directory,
    before its manifest is written."""

  def before_rename(self, step: int) -> None:
    """Called in the save of checkpoint `step` after its manifest, before the atomic rename."""

  def check_free_space(self) -> bool:
    """Whether a save checks the free space first (True)."""
    return True


_installed = RunHooks()


def installed() -> RunHooks:
  """The hooks runs call now (the no-op `RunHooks` unless a test installed others)."""
  return _installed


def install(hooks: RunHooks | None) -> RunHooks:
  """Makes runs call `hooks` (None: the no-op `RunHooks` again); returns the hooks it replaces."""
  global _installed
  previous, _installed = _installed, hooks or RunHooks()
  return previous
