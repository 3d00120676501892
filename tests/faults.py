"""Fault injection for the fault-tolerance tests: `FaultHooks`, installed into a run through
`capsjax.infra.hooks`, and a launcher that runs the real CLI with them.

In the test process: `hooks.install(FaultHooks(nan_at_step=11))`. In a subprocess:

    python tests/faults.py train --workdir ...     # instead of python -m capsjax.cli

reads the faults from these environment variables once, at start, installs them and runs
`capsjax.cli.main` (each names a global, 1-based step):

- CAPSJAX_FAULT_PAUSE_AFTER_STEP=N: after training step N, prints `capsjax fault: paused after
  step N` to stderr and waits (up to 120 s) until a SIGINT/SIGTERM arrives, so a test can deliver
  the signal at a known step.
- CAPSJAX_FAULT_PAUSE_IN_SAVE=N: the save of checkpoint N stops after Orbax has written every
  file into its temporary directory and before the atomic rename, prints `capsjax fault: pausing
  in save of step N` and sleeps 120 s, so a test can SIGKILL (or signal twice) mid-save.
- CAPSJAX_FAULT_NAN_AT_STEP=N: before training step N one weight of the first layer is set to
  NaN, so the real step produces a non-finite loss and gradients.
- CAPSJAX_FAULT_ENOSPC_IN_SAVE=N: the save of checkpoint N raises the real OSError(ENOSPC) after
  Orbax has written its files into the temporary directory.
- CAPSJAX_FAULT_SKIP_SPACE_CHECK=1: saves skip the free-space check, so a save that cannot fit
  starts and meets the file system's own ENOSPC.
- CAPSJAX_FAULT_CONTINUE_FILE=PATH: the two pauses also end as soon as PATH exists, so a test can
  change the workdir (fill its disk, make it read-only) and let the run go on.
"""

import dataclasses
import errno
import os
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from capsjax.infra.hooks import RunHooks

PREFIX = "CAPSJAX_FAULT_"
_PAUSE_SECONDS = 120.0


def _say(message: str) -> None:
  sys.stderr.write(f"capsjax fault: {message}\n")
  sys.stderr.flush()


@dataclasses.dataclass
class FaultHooks(RunHooks):
  """The faults of the module docstring; None (or False) leaves one out."""

  pause_after_step: int | None = None
  pause_in_save: int | None = None
  nan_at_step: int | None = None
  enospc_in_save: int | None = None
  skip_space_check: bool = False
  continue_file: str | None = None

  @classmethod
  def from_environment(cls, environ=os.environ) -> "FaultHooks":
    """The faults named by CAPSJAX_FAULT_* variables of `environ`."""
    value = lambda name: environ.get(PREFIX + name.upper()) or None
    steps = {f: int(value(f)) for f in ("pause_after_step", "pause_in_save", "nan_at_step",
                                         "enospc_in_save") if value(f)}
    return cls(**steps, skip_space_check=value("skip_space_check") not in (None, "0"),
               continue_file=value("continue_file"))

  def _pause(self, until: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _PAUSE_SECONDS
    while not until() and time.monotonic() < deadline and not (
        self.continue_file and os.path.exists(self.continue_file)):
      time.sleep(0.02)

  def chunk_ends(self) -> set[int]:
    ends = set()
    if self.pause_after_step:
      ends.add(self.pause_after_step)
    if self.nan_at_step:
      ends.add(self.nan_at_step - 1)  # so that the NaN goes in before step N itself
    return ends

  def before_step(self, state, step: int):
    if step != self.nan_at_step:
      return state
    _say(f"injecting NaN before step {step}")
    leaves, treedef = jax.tree.flatten(state)
    k = next(i for i, x in enumerate(leaves) if np.issubdtype(x.dtype, np.floating))
    leaves[k] = leaves[k].reshape(-1).at[0].set(np.nan).reshape(leaves[k].shape)
    return jax.tree.unflatten(treedef, leaves)

  def after_step(self, step: int, stop_requested: Callable[[], bool]) -> None:
    if step == self.pause_after_step:
      _say(f"paused after step {step}")
      self._pause(stop_requested)

  def files_written(self, step: int, temporary: Path) -> None:
    if step == self.enospc_in_save:
      _say(f"failing the save of step {step} with ENOSPC")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary))

  def before_rename(self, step: int) -> None:
    if step == self.pause_in_save:
      _say(f"pausing in save of step {step}")
      self._pause(lambda: False)

  def check_free_space(self) -> bool:
    return not self.skip_space_check


LAUNCHER = str(Path(__file__).resolve())


if __name__ == "__main__":
  from capsjax import cli
  from capsjax.infra import hooks

  hooks.install(FaultHooks.from_environment())
  sys.exit(cli.main())
