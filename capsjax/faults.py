"""Fault-injection hooks for the fault-tolerance tests; inert unless their variable is set.

Each hook is an environment variable naming a global step (1-based, like checkpoint steps):

- `CAPSJAX_FAULT_PAUSE_AFTER_STEP=N`: after training step N the loop prints `capsjax fault:
  paused after step N` to stderr and waits (up to 120 s) until a SIGINT/SIGTERM arrives, so a
  test can deliver the signal at a known step.
- `CAPSJAX_FAULT_PAUSE_IN_SAVE=N`: the save of checkpoint N stops after Orbax has written every
  file into its temporary directory and before the atomic rename, prints `capsjax fault: pausing
  in save of step N` and sleeps 120 s, so a test can SIGKILL (or signal twice) mid-save.
- `CAPSJAX_FAULT_NAN_AT_STEP=N`: before training step N one weight of the first layer is set to
  NaN, so the real step produces a non-finite loss and gradients.
- `CAPSJAX_FAULT_ENOSPC_IN_SAVE=N`: the save of checkpoint N raises the real
  `OSError(ENOSPC)` after Orbax has written its files into the temporary directory (a disk that
  fills up during the save, without needing a small file system).
- `CAPSJAX_FAULT_SKIP_SPACE_CHECK=1`: saves skip the free-space check, so a save that cannot fit
  starts and meets the file system's own ENOSPC.
- `CAPSJAX_FAULT_CONTINUE_FILE=PATH`: the two pauses above also end as soon as PATH exists, so a
  test can change the workdir (fill its disk, make it read-only, unmount it) and let the run go on.
"""

import errno
import os
import sys
import time
from typing import Callable

import jax
import numpy as np

PAUSE_AFTER_STEP = "CAPSJAX_FAULT_PAUSE_AFTER_STEP"
PAUSE_IN_SAVE = "CAPSJAX_FAULT_PAUSE_IN_SAVE"
NAN_AT_STEP = "CAPSJAX_FAULT_NAN_AT_STEP"
ENOSPC_IN_SAVE = "CAPSJAX_FAULT_ENOSPC_IN_SAVE"
SKIP_SPACE_CHECK = "CAPSJAX_FAULT_SKIP_SPACE_CHECK"
CONTINUE_FILE = "CAPSJAX_FAULT_CONTINUE_FILE"
_PAUSE_SECONDS = 120.0


def _at(variable: str, step: int) -> bool:
  value = os.environ.get(variable)
  return bool(value) and int(value) == step


def _say(message: str) -> None:
  sys.stderr.write(f"capsjax fault: {message}\n")
  sys.stderr.flush()


def _continue_requested() -> bool:
  path = os.environ.get(CONTINUE_FILE)
  return bool(path) and os.path.exists(path)


def _pause(until: Callable[[], bool]) -> None:
  deadline = time.monotonic() + _PAUSE_SECONDS
  while not until() and not _continue_requested() and time.monotonic() < deadline:
    time.sleep(0.02)


def chunk_boundaries() -> set[int]:
  """Steps at which a chunk of training steps (several per dispatch) must end for the hooks: the
  pause after step N, and step N - 1 so that the NaN can be injected before step N."""
  steps = set()
  for variable, offset in ((PAUSE_AFTER_STEP, 0), (NAN_AT_STEP, -1)):
    if os.environ.get(variable):
      steps.add(int(os.environ[variable]) + offset)
  return steps


def pause_after_step(step: int, stop_requested: Callable[[], bool]) -> None:
  """Waits after `step` until `stop_requested()` (a signal arrived) when the hook names it."""
  if _at(PAUSE_AFTER_STEP, step):
    _say(f"paused after step {step}")
    _pause(stop_requested)


def pause_in_save(step: int) -> None:
  """Sleeps inside the save of checkpoint `step` when the hook names it."""
  if _at(PAUSE_IN_SAVE, step):
    _say(f"pausing in save of step {step}")
    _pause(lambda: False)


def maybe_fail_in_save(step: int, where) -> None:
  """Raises OSError(ENOSPC) inside the save of checkpoint `step` when the hook names it."""
  if _at(ENOSPC_IN_SAVE, step):
    _say(f"failing the save of step {step} with ENOSPC")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))


def skip_space_check() -> bool:
  """True when the free-space check before a save is turned off (CAPSJAX_FAULT_SKIP_SPACE_CHECK)."""
  return os.environ.get(SKIP_SPACE_CHECK, "") not in ("", "0")


def maybe_poison(state, step: int):
  """`state` with its first floating-point leaf's first entry set to NaN when the hook names
  `step`; otherwise `state` unchanged."""
  if not _at(NAN_AT_STEP, step):
    return state
  _say(f"injecting NaN before step {step}")
  leaves, treedef = jax.tree.flatten(state)
  k = next(i for i, x in enumerate(leaves) if np.issubdtype(x.dtype, np.floating))
  leaves[k] = leaves[k].reshape(-1).at[0].set(np.nan).reshape(leaves[k].shape)
  return jax.tree.unflatten(treedef, leaves)
