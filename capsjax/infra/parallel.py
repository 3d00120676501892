"""Data parallelism with `jax.sharding`: one `Mesh` axis, `data`, over the devices.

The pattern of flax's NNX data-parallel example: parameters and optimizer state are replicated
on every device, each step's batch is split along the `data` axis, and XLA's partitioner turns
the batch-mean gradient into an all-reduce. Nothing else changes: the same compiled step runs on
one device or N, and after K steps the parameters equal a single-device run's with the same
global batch up to float rounding (tests/test_parallel.py states the tolerance).

In a multi-process run (`capsjax.infra.distributed`) the mesh spans the devices of every
process, and `put` builds each global array from the parts on the calling process's own devices.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def make_mesh(devices: int | None, batch_size: int) -> Mesh:
  """A 1-D mesh over the first `devices` devices (None: all of them; in a multi-process run,
  always all of every process's).

  Raises:
    ValueError: (one line) more devices asked for than are present, a non-positive count,
      `devices` other than all of them in a multi-process run, or a batch that does not split
      evenly over the devices (or over the processes).
  """
  present = jax.devices()
  processes = jax.process_count()
  if processes > 1:
    if batch_size % processes:
      raise ValueError(f"global batch size {batch_size} does not split over {processes} "
                       f"processes; use a batch size divisible by {processes}.")
    if devices is not None and devices != len(present):
      raise ValueError(f"--devices {devices}: a {processes}-process run uses every device of "
                       f"every process ({len(present)}); leave --devices out.")
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


def put(tree, sharding: NamedSharding):
  """`jax.device_put(tree, sharding)` that also works across processes: there each process
  supplies, from its own copy of every array, only the parts on its own devices."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: _global_array(x, sharding), tree)


def _global_array(x, sharding: NamedSharding) -> jax.Array:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _global_array(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return from_parts(host.shape, sharding, lambda index: host[index])


def from_parts(shape: tuple[int, ...], sharding: NamedSharding | None, part) -> jax.Array:
  """A device array of `shape` from `part(index)`, the host values of one device's part (index:
  a tuple of slices); each process computes only the parts on its own devices. With no
  `sharding`, the whole array on the default device."""
  if sharding is None:
    return jax.device_put(part(tuple(slice(None) for _ in shape)))
  return jax.make_array_from_callback(shape, sharding, part)


def batch_placer(mesh: Mesh, batch_size: int):
  """`place(arrays)`: puts a batch's arrays (leading axis B) on `mesh` split along B, so that
  each device evaluates its part; when the batch does not split evenly, whole on every device
  (multi-process) or None: left to the jitted step (one process)."""
  n = mesh.devices.size
  if n > 1 and batch_size % n == 0:
    sharding = batch_split(mesh)
  elif jax.process_count() > 1:
    sharding = replicated(mesh)
  else:
    return None
  return lambda arrays: put(arrays, sharding)
