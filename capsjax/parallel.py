"""Data parallelism with `jax.sharding`: one `Mesh` axis, `data`, over the local devices.

The pattern of flax's NNX data-parallel example: parameters and optimizer state are replicated
on every device, each step's batch is split along the `data` axis, and XLA's partitioner turns
the batch-mean gradient into an all-reduce. Nothing else changes: the same compiled step runs on
one device or N, and after K steps the parameters equal a single-device run's with the same
global batch up to float rounding (tests/test_parallel.py states the tolerance).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def make_mesh(devices: int | None, batch_size: int) -> Mesh:
  """A 1-D mesh over the first `devices` local devices (None: all of them).

  Raises ValueError (one line) if more devices are asked for than are present, or if the
  batch does not split evenly over them.
  """
  present = jax.local_devices()
  n = len(present) if devices is None else devices
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"devices must be a positive integer, got {devices!r}.")
  if n > len(present):
    raise ValueError(f"{n} devices asked for, but only {len(present)} "
                     f"{present[0].platform.upper()} device(s) are present.")
  if batch_size % n:
    raise ValueError(f"batch size {batch_size} does not split over {n} devices; use a batch "
                     f"size divisible by {n} or another --devices.")
  return Mesh(np.asarray(present[:n]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same whole array on every device (parameters, optimizer state, the training split)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_split(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Dimension `axis` (the batch) split over the `data` axis, the others whole."""
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS))


def batch_placer(mesh: Mesh, batch_size: int):
  """`place(arrays)`: puts a batch's arrays (leading axis B) on `mesh` split along B, so that
  each device evaluates its part; None (leave the batch whole) for one device or a batch size
  that does not split evenly."""
  n = mesh.devices.size
  if n == 1 or batch_size % n:
    return None
  sharding = batch_split(mesh)
  return lambda arrays: jax.device_put(arrays, sharding)
