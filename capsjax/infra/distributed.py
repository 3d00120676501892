"""Multi-process (multi-host) runs with `jax.distributed`: one process per host, or per GPU.

Every process runs the same `capsjax train` command; together they form one global device mesh
(`capsjax.infra.parallel`), each process feeds the part of every batch that its own devices train on
(`capsjax.data.pipeline`), only process 0 prints and writes metrics, and Orbax writes and reads the
checkpoints with all processes taking part (`capsjax.infra.checkpoint`).

Two ways to start:

- explicit: `--coordinator-address HOST:PORT --num-processes N --process-id I` on each process
  (process 0 runs the coordinator on HOST:PORT);
- from the cluster's environment, `--distributed`: `jax.distributed.initialize()` reads SLURM,
  Open MPI or the Cloud TPU metadata itself.

Before joining, a process other than 0 waits up to `timeout_s` for the coordinator to accept a
TCP connection and raises a one-line ValueError if it never does (JAX itself would abort the
process with a C++ stack trace). Process 0 checks that it can listen on the port. Once all have
joined, JAX's heartbeat is meant to stop every process if one dies (not tested here).

A check whose answer may differ between processes (the workdir lock and the workdir still being
there, the free space before a save, which checkpoint is the newest good one) is made once, by
process 0, and its outcome broadcast (`decide`): all processes take the same branch, and a
failed check ends every one of them with the same error instead of one raising while the others
wait for it in a collective.
"""

import importlib
import json
import socket
import time
from typing import Callable, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from capsjax.core.errors import one_line

DEFAULT_TIMEOUT_S = 300


def _host_port(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator-address must be HOST:PORT (e.g. node0:12355), "
                     f"got {address!r}.")
  return host.strip("[]"), int(port)


def _wait_for_coordinator(host: str, port: int, timeout_s: float, who: str) -> None:
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
        return
    except OSError as e:
      reason = e.strerror or type(e).__name__
      if time.monotonic() >= deadline:
        raise ValueError(f"{who}: no coordinator answered at {host}:{port} within {timeout_s:g} s "
                         f"({reason}); start process 0 with the same --coordinator-address, "
                         "or check the address and the firewall.") from None
      time.sleep(0.2)


def _check_can_listen(host: str, port: int) -> None:
  try:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      s.bind(("", port))
  except OSError as e:
    raise ValueError(f"process 0 cannot run the coordinator on port {port} ({e.strerror}); "
                     "choose another port in --coordinator-address.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
  """Joins this process to a multi-process run; False (nothing done) for a one-process run.

  Call before JAX runs anything.

  Args:
    coordinator_address: HOST:PORT of process 0's coordinator (--coordinator-address).
    num_processes: the number of processes N >= 1.
    process_id: this process's index in 0..N-1.
    auto: let JAX detect the cluster (SLURM, Open MPI, Cloud TPU) for whatever is not given.
    timeout_s: seconds to wait for the coordinator (and for JAX's initialisation).

  Returns:
    True if this process joined a multi-process run, False if nothing was asked for.

  Raises:
    ValueError: (one line) incomplete or bad flags, a port process 0 cannot listen on, a
      coordinator that does not answer within `timeout_s`, or no cluster found with `auto`.
  """
  given = {"--coordinator-address": coordinator_address, "--num-processes": num_processes,
           "--process-id": process_id}
  if not auto and all(v is None for v in given.values()):
    return False
  missing = [flag for flag, v in given.items() if v is None]
  if missing and not auto:
    raise ValueError(f"{', '.join(missing)} missing: a multi-process run needs "
                     "--coordinator-address, --num-processes and --process-id together (or "
                     "--distributed to read them from SLURM, Open MPI or a TPU pod).")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num-processes must be >= 1, got {num_processes}.")
  if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
    raise ValueError(f"--process-id must be in 0..{num_processes - 1} for {num_processes} "
                     f"processes, got {process_id}.")
  if timeout_s <= 0:
    raise ValueError(f"--coordinator-timeout must be positive, got {timeout_s:g}.")
  if not missing:
    host, port = _host_port(coordinator_address)
    if process_id == 0:
      _check_can_listen(host, port)
    else:
      _wait_for_coordinator(host, port, timeout_s, f"process {process_id} of {num_processes}")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(max(1, timeout_s)))
  except (ValueError, RuntimeError) as e:  # e.g. --distributed outside a detected cluster
    raise ValueError(f"could not start the multi-process run: {one_line(e)} "
                     "Outside SLURM, Open MPI or a TPU pod give --coordinator-address, "
                     "--num-processes and --process-id.") from None
  return True


def is_main() -> bool:
  """True on the process that prints, writes metrics and owns the workdir (process 0)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (e.g. a stop signal that reached only
  some); a small all-gather, skipped in a one-process run."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


T = TypeVar("T")
_CHUNK_BYTES = 1024  # a decision's text crosses in broadcasts of this size (one compiled shape)


def decide(fn: Callable[[], T]) -> T:
  """`fn()` run on process 0 alone, its outcome given to every process: a check whose answer
  may differ between processes (the workdir still there, free space, which checkpoint is good),
  made once before something all processes do together, so that all take the same branch.

  Every process must call it at the same point. `fn`'s value must be JSON-serialisable (None,
  numbers, strings, lists, dicts); every process, 0 included, returns its JSON round trip (a
  tuple comes back as a list). If `fn` raises, process 0 raises that exception and every other
  process raises one of the same class with the same one-line message (RuntimeError naming
  process 0 if that class cannot be made from one message). One-process run: just `fn()`,
  nothing sent, no collective.
  """
  if jax.process_count() == 1:
    return fn()
  error, failed, text = None, 0, ""
  if is_main():
    try:
      value = fn()
      text = "" if value is None else json.dumps(value)
    except Exception as e:  # every process must learn of any failure, or the others would wait
      cls = type(e)
      error, failed = e, 1
      text = json.dumps({"class": f"{cls.__module__}:{cls.__qualname__}",
                         "message": one_line(e)})
  failed, text = _broadcast_from_main(failed, text)
  if error is not None:
    raise error
  if failed:
    raise _rebuilt_error(json.loads(text))
  return None if text == "" else json.loads(text)


def _broadcast_from_main(flag: int, text: str) -> tuple[int, str]:
  """(flag, text) of process 0 on every process: a header, then the UTF-8 text in fixed-size
  pieces (none for an empty text)."""
  data = text.encode() if is_main() else b""
  header = multihost_utils.broadcast_one_to_all(np.array([flag, len(data)], np.int32))
  flag, size = int(header[0]), int(header[1])
  received = bytearray()
  for start in range(0, size, _CHUNK_BYTES):
    piece = np.zeros(_CHUNK_BYTES, np.uint8)
    part = data[start:start + _CHUNK_BYTES]
    piece[:len(part)] = np.frombuffer(part, np.uint8)
    received += np.asarray(multihost_utils.broadcast_one_to_all(piece)).tobytes()
  return flag, received[:size].decode()


def _rebuilt_error(sent: dict) -> Exception:
  """The exception process 0 raised in `decide`, as one of the same class and message."""
  module, _, name = sent["class"].partition(":")
  try:
    cls = importlib.import_module(module)
    for part in name.split("."):
      cls = getattr(cls, part)
    if isinstance(cls, type) and issubclass(cls, Exception):
      return cls(sent["message"])
  except Exception:  # a class this process cannot import or build from one message
    pass
  return RuntimeError(f"process 0 failed: {sent['message']}")
