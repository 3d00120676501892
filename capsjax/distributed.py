"""Multi-process (multi-host) runs with `jax.distributed`: one process per host, or per GPU.

Every process runs the same `capsjax train` command; together they form one global device mesh
(capsjax/parallel.py), each process feeds the part of every batch that its own devices train on
(capsjax/pipeline.py), only process 0 prints and writes metrics, and Orbax writes and reads the
checkpoints with all processes taking part (capsjax/checkpoint.py).

Two ways to start:

- explicit: `--coordinator-address HOST:PORT --num-processes N --process-id I` on each process
  (process 0 runs the coordinator on HOST:PORT);
- from the cluster's environment, `--distributed`: `jax.distributed.initialize()` reads SLURM,
  Open MPI or the Cloud TPU metadata itself.

Before joining, a process other than 0 waits up to `timeout_s` for the coordinator to accept a
TCP connection and raises a one-line ValueError if it never does (JAX itself would abort the
process with a C++ stack trace). Process 0 checks that it can listen on the port. Once all have
joined, JAX's heartbeat is meant to stop every process if one dies (not tested here).
"""

import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

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

  Call before JAX runs anything. `auto`: let JAX detect the cluster (SLURM, Open MPI, Cloud
  TPU) for whatever is not given. Raises ValueError (one line) for incomplete or bad flags, a
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
    raise ValueError(f"could not start the multi-process run: {' '.join(str(e).split())} "
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


def barrier(name: str) -> None:
  """Waits until every process has reached `name` (no-op in a one-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
