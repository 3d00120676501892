"""Safe interruption: SIGINT/SIGTERM ask the training loop to stop after the current step.

The first signal only sets a flag, which the loop checks after every step; it then saves a
checkpoint and raises `TrainingInterrupted`. A second signal ends the process at once with
`os._exit(128 + signum)`: a checkpoint being written is then left in Orbax's temporary
directory, never under its final name, so the last complete checkpoint stays intact.
"""

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
  """Training stopped on a signal after saving checkpoint `step`."""

  def __init__(self, signum: int, step: int, checkpoint_dir: str):
    self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
    super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; "
                     f"checkpoint {step} saved in {checkpoint_dir}")

  @property
  def exit_code(self) -> int:
    """The shell convention for death by a signal: 128 + signal number (130, 143)."""
    return 128 + self.signum


def _say(text: str) -> None:
  os.write(2, f"capsjax: {text}\n".encode())  # os.write: safe even mid-print in the main thread


class StopOnSignal:
  """Context manager installing the two-stage SIGINT/SIGTERM handlers, restoring the old ones on
  exit. Outside the main thread (where Python cannot install handlers) it does nothing."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    """Whether a SIGINT/SIGTERM arrived while the handlers were installed (number: `signum`)."""
    return self.signum is not None

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signum is not None:
      _say(f"second signal ({name}): exiting now without saving; the last complete checkpoint "
           "is intact.")
      os._exit(128 + signum)
    self.signum = signum
    _say(f"{name} received: finishing the current step and saving a checkpoint "
         "(send it again to exit at once).")

  def __enter__(self) -> "StopOnSignal":
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
