"""The training workdir: one writer at a time, and writes that fail cleanly.

- `WorkdirLock`: an exclusive `fcntl.flock` on `WORKDIR/.lock`, held by `capsjax train` for its
  whole life. The kernel releases it when the process ends, however it ends (SIGKILL included),
  so a dead run never leaves a stale lock. The file records the owner (PID, host, start time) for
  the message a second writer gets. Readers (`capsjax eval`) do not lock.
- `StorageError`: a write to the workdir failed (disk full, read-only file system, workdir
  removed or unmounted). Raised with one line saying what could not be written and why.
- `write_text_atomic`, `append_line`: config.json is replaced atomically and a metrics line is
  appended whole or not at all, so neither is ever left half-written.
"""

import datetime
import errno as errno_lib
import fcntl
import json
import os
import re
import shutil
import socket
from pathlib import Path

from capsjax.infra import distributed

LOCK_FILE = ".lock"
# Errors that mean "this file system cannot flock" rather than "someone holds the lock".
_NO_FLOCK = (errno_lib.ENOLCK, errno_lib.EOPNOTSUPP, errno_lib.ENOSYS, errno_lib.EINVAL)


class StorageError(RuntimeError):
  """Writing to the workdir failed: no space, read-only, removed or unmounted."""


class WorkdirBusyError(ValueError):
  """Another process holds the workdir's lock."""


def prepare_workdir(workdir: str | os.PathLike) -> Path:
  """Creates `workdir` if needed; raises ValueError if it cannot be used."""
  path = Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise ValueError(f"workdir {str(path)!r} exists and is not a directory.")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create workdir {str(path)!r}: {e.strerror}.") from e
  if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
    raise ValueError(f"workdir {str(path)!r} is not readable and writable by this user.")
  return path


def os_error_reason(error: BaseException) -> str | None:
  """"no space left on device", "read-only file system", ... for an OS-level write failure.

  Understands OSError and the errors Orbax/TensorStore raise (their text carries
  `[os_error_code='28']`); None when `error` is not an OS error.
  """
  code = error.errno if isinstance(error, OSError) else None
  if code is None:
    match = re.search(r"os_error_code='?(\d+)", str(error))
    code = int(match.group(1)) if match else None
  return None if code is None else _reason(code)


def _reason(code: int) -> str:
  text = os.strerror(code)
  return text[:1].lower() + text[1:]


NO_SPACE = _reason(errno_lib.ENOSPC)  # "no space left on device"


def megabytes(num_bytes: float) -> str:
  """`num_bytes` as decimal megabytes for a message, e.g. "12.3 MB" (1 MB = 10^6 bytes)."""
  return f"{num_bytes / 1e6:.1f} MB"


def free_bytes(path: Path) -> int:
  """Free bytes for an unprivileged writer on the file system holding `path`."""
  return shutil.disk_usage(path).free


def write_text_atomic(path: Path, text: str) -> None:
  """Replaces `path` by `text` atomically (a temporary file, then rename); StorageError if the
  write fails, leaving the old file as it was."""
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    raise StorageError(f"could not write {path.name} in {str(path.parent)!r}: "
                       f"{os_error_reason(e)}") from e


def append_line(path: Path, line: str) -> None:
  """Appends `line` + newline to `path` whole or not at all; StorageError if it cannot."""
  data = (line + "\n").encode()
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  except OSError as e:
    raise StorageError(f"could not write {path.name} in {str(path.parent)!r}: "
                       f"{os_error_reason(e)}") from e
  try:
    size = os.fstat(fd).st_size
    written = 0
    while written < len(data):
      written += os.write(fd, data[written:])
  except OSError as e:
    try:  # take back a partial line so every line of the file stays valid JSON
      os.ftruncate(fd, size)
    except OSError:
      pass
    raise StorageError(f"could not write {path.name} in {str(path.parent)!r}: "
                       f"{os_error_reason(e)}") from e
  finally:
    os.close(fd)


class WorkdirLock:
  """Exclusive lock on a workdir for the life of a training run (a context manager).

  Raises WorkdirBusyError on entry if another process holds it. On a file system without flock
  support it warns (through `report`) and runs unlocked. In a multi-process run
  (`capsjax.infra.distributed`) every process enters it: process 0 takes the lock, and every process
  raises its error if it could not; `check` does nothing on the others.
  """

  def __init__(self, workdir: Path, report=print):
    self.workdir = Path(workdir).absolute()
    self.path = self.workdir / LOCK_FILE
    self.report = report
    self._fd: int | None = None
    self._identity: tuple[int, int] | None = None

  def __enter__(self) -> "WorkdirLock":
    distributed.decide(self._acquire)
    return self

  def _acquire(self) -> None:
    # Read-only: flock needs no write access, and an open writable file would keep the file
    # system from being remounted read-only (what an administrator may do to a full disk).
    fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _read_owner(fd)
      os.close(fd)
      raise WorkdirBusyError(f"workdir {str(self.workdir)!r} is in use by {owner}; wait for it "
                             "or use another --workdir.") from None
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        os.close(fd)
        raise
      self.report(f"Warning: cannot lock workdir {str(self.workdir)!r} ({e.strerror}: this file "
                  "system does not support flock); make sure no other run writes to it.")
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                 "%Y-%m-%d %H:%M:%S UTC")}
    self.path.write_text(json.dumps(owner))
    stat = os.fstat(fd)
    self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)

  def check(self) -> None:
    """Raises StorageError if the workdir was removed, moved or unmounted since the lock was
    taken (its lock file is no longer the one this process holds). Local: in a multi-process
    run call it inside a `distributed.decide` (as Checkpointer.save does) so that all learn."""
    if self._fd is None:
      return
    try:
      stat = os.stat(self.path)
      same = (stat.st_dev, stat.st_ino) == self._identity and os.fstat(self._fd).st_nlink > 0
    except OSError:
      same = False
    if not same:
      raise StorageError(f"workdir {str(self.workdir)!r} is gone (removed, moved or unmounted "
                         "during the run); nothing more can be saved there")

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None


def _read_owner(fd: int) -> str:
  """"process PID on HOST (started ...)" from a held lock file, as well as it can be read."""
  try:
    owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    return f"process {owner['pid']} on {owner['host']} (started {owner['started']})"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (its owner record is not written yet)"
