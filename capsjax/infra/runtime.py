"""Host-side runtime tuning for XLA:CPU (the CPU backend only).

XLA:CPU allocates each step's large temporaries afresh. With glibc's defaults, allocations above
the mmap threshold are mapped and unmapped every step, so every step pays a page fault per 4 KiB
of activations, a noticeable share of a CapsNet train step (measured figures: docs/results.md).
Keeping freed memory in a single heap makes the next step reuse already-mapped pages.
"""

import ctypes
import ctypes.util
import importlib.metadata
import os
import pkgutil
import sys

DISABLE_ENV = "CAPSJAX_TUNE_MALLOC"  # set to 0 to keep glibc's defaults

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def expected_platform() -> str:
  """The platform JAX's default backend is or will be, found without starting a backend.

  Once backends are running: `jax.default_backend()`. Before: the first of `JAX_PLATFORMS`
  (`jax.config.jax_platforms`) if set; else "cpu" unless a PJRT plugin (the `jax_plugins`
  namespace or entry points: CUDA, ROCm, TPU ...) is installed, in which case "accelerator"
  (JAX would take it if its device is there).
  """
  import jax  # here: `capsjax --help` and `--version` do not load it
  from jax._src import xla_bridge
  if getattr(xla_bridge, "backends_are_initialized", lambda: True)():  # (unknown: ask JAX)
    return jax.default_backend()
  requested = jax.config.jax_platforms
  if requested:
    return requested.split(",")[0].strip()
  if importlib.metadata.entry_points(group="jax_plugins"):
    return "accelerator"
  try:
    import jax_plugins
  except ImportError:
    return "cpu"
  return "accelerator" if any(pkgutil.iter_modules(jax_plugins.__path__)) else "cpu"


def tune_host_allocator(platform: str | None = None) -> bool:
  """Tells glibc malloc to keep freed memory for reuse (no per-allocation mmap, no trimming,
  one arena), where XLA:CPU runs the programs. Process-wide; call it before JAX starts its
  backend (its threads take their own arenas then, and settings made after that leave every
  step mapping its temporaries afresh: measured in docs/results.md) and before the first step;
  the CLI and the benchmarks call it at start.

  On an accelerator the host allocates no step temporaries, and keeping every freed host
  buffer (data pipeline, checkpoints) would only grow the process: nothing is changed there.

  The price is resident memory: freed memory is kept, not returned to the OS, so the peak RSS
  of a run is higher, in exchange for faster steps (measured figures: docs/results.md). Setting
  CAPSJAX_TUNE_MALLOC=0 turns this off.

  Args:
    platform: the platform the programs run on ("cpu", "gpu", ...); None:
      `expected_platform()`, which starts no backend.

  Returns:
    True if glibc accepted the settings; False where the platform is not the CPU, where it was
    turned off, or where the C library is not glibc.
  """
  if os.environ.get(DISABLE_ENV, "1") == "0" or not sys.platform.startswith("linux"):
    return False
  if (platform or expected_platform()) != "cpu":
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
