"""Host-side runtime tuning for XLA:CPU (the CPU backend only).

XLA:CPU allocates each step's large temporaries afresh. With glibc's defaults, allocations above
the mmap threshold are mapped and unmapped every step, so every step pays a page fault per 4 KiB
of activations, a noticeable share of a CapsNet train step (measured figures: docs/results.md).
Keeping freed memory in a single heap makes the next step reuse already-mapped pages.
"""

import ctypes
import ctypes.util
import os
import sys

DISABLE_ENV = "CAPSJAX_TUNE_MALLOC"  # set to 0 to keep glibc's defaults

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def tune_host_allocator(platform: str | None = None) -> bool:
  """Tells glibc malloc to keep freed memory for reuse (no per-allocation mmap, no trimming,
  one arena), where XLA:CPU runs the programs. Process-wide; call once, before the first train
  step (the CLI calls it once the command's backend is known: for `train` after
  `jax.distributed.initialize`).

  On an accelerator the host allocates no step temporaries, and keeping every freed host
  buffer (data pipeline, checkpoints) would only grow the process: nothing is changed there.

  The price is resident memory: freed memory is kept, not returned to the OS, so the peak RSS
  of a run is higher, in exchange for faster steps (measured figures: docs/results.md). Setting
  CAPSJAX_TUNE_MALLOC=0 turns this off.

  Args:
    platform: the JAX backend the programs run on ("cpu", "gpu", ...); None:
      `jax.default_backend()`, which initialises JAX's backends (after
      `jax.distributed.initialize`, never before it).

  Returns:
    True if glibc accepted the settings; False where the backend is not the CPU, where it was
    turned off, or where the C library is not glibc.
  """
  if os.environ.get(DISABLE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  if platform is None:
    import jax  # here: `capsjax --help` and `--version` do not load it
    platform = jax.default_backend()
  if platform != "cpu":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  ok = mallopt(_M_ARENA_MAX, 1)
  ok &= mallopt(_M_MMAP_MAX, 0)
  ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
  return bool(ok)
