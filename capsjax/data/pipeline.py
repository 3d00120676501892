"""Where training batches come from: the split resident on the device, or host batches.

The training loop runs up to K steps per dispatch (`capsjax.train.steps.make_train_chunk`); a source
hands it, per chunk, the device arrays that program reads:

- `DeviceResident`: the whole training split is copied to the device once, as uint8 (MNIST: 47
  MB); a chunk is then only its [K, B] example indices (a few KB) and two scalars, and each step
  gathers its batch on the device.
- `HostBatches`: for a split too large for the device: each chunk's K batches are gathered on the
  host, as [K, B, ...], and copied with `jax.device_put`, which is asynchronous, so the loop
  prepares chunk i + 1 while the device runs chunk i (a prefetch of one chunk).

Both draw the same example indices, `capsjax.data.batch_indices(seed, step)`, so the data order
(and so a resumed run) is the same whichever source runs. With a `mesh` (`capsjax.infra.parallel`)
each step's batch is split over its `data` axis: the resident split is copied whole to every
device and only the indices are split; host batches are split themselves. Across processes each
process builds only the parts on its own devices (`jax.make_array_from_callback`): the indices of
its share of every batch, or just those examples.
"""

import os
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from capsjax.data import order, storage
from capsjax.infra import parallel

PIPELINES = ("auto", "device", "host")
# "auto" keeps the split on the device when it takes at most this fraction of the device's
# memory (the rest is for parameters, optimizer state and activations).
DEVICE_DATA_FRACTION = 0.25


class Chunk(NamedTuple):
  """The data arguments of a `make_train_chunk` program, all on the device.

  Attributes:
    images: [N, H, W, C] uint8, the resident split; or [K, B, H, W, C], the chunk's batches.
    labels: [N] or [K, B] int32.
    indices: [K, B] int32 into the split (rows from num_steps on unused); None when `images`
      holds the batches themselves.
    first_step: () int32, the global 0-based step of row 0.
    num_steps: () int32, the steps to run (<= K).
  """

  images: jax.Array  # [N, H, W, C] uint8: the split; or [K, B, H, W, C]: the chunk's batches
  labels: jax.Array  # [N] or [K, B] int32
  indices: jax.Array | None  # [K, B] int32 into the split, rows from num_steps on unused; None
  # when images holds the batches themselves
  first_step: jax.Array  # () int32, global 0-based step of row 0
  num_steps: jax.Array  # () int32


def device_memory_bytes(device: jax.Device | None = None) -> int:
  """Bytes of memory the device may use: the allocator's limit on GPU/TPU, physical RAM on the
  CPU (default device: the first of `jax.devices()`)."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose(pipeline: str, split: storage.Split, device: jax.Device | None = None) -> str:
  """"device" or "host" for `pipeline` ("auto": device if the split's images and labels take at
  most DEVICE_DATA_FRACTION of the device's memory).

  Raises:
    ValueError: `pipeline` is not one of PIPELINES.
  """
  if pipeline not in PIPELINES:
    raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}.")
  if pipeline != "auto":
    return pipeline
  size = split.images.nbytes + split.labels.nbytes
  return "device" if size <= DEVICE_DATA_FRACTION * device_memory_bytes(device) else "host"


def chunk_indices(num_examples: int, batch_size: int, seed: int, first_step: int,
                  num_steps: int, capacity: int) -> np.ndarray:
  """[capacity, batch_size] int32: row i holds the examples of global step first_step + i
  (`order.batch_indices`); rows from num_steps on are zeros.

  Raises:
    ValueError: num_steps is not in 1..capacity.
  """
  if not 1 <= num_steps <= capacity:
    raise ValueError(f"a chunk holds 1 to {capacity} steps, got {num_steps}.")
  rows = np.zeros((capacity, batch_size), np.int32)
  for i in range(num_steps):
    rows[i] = order.batch_indices(num_examples, batch_size, seed, first_step + i)
  return rows


class DeviceResident:
  """The training split on the device; chunks carry only indices.

  `num_examples`: the size of the set built on the stored `split` (default: len(split); more
  for a set such as MultiMNIST's, whose examples the step builds from the stored split).

  Args:
    split: the stored training split, copied to the device(s) once.
    batch_size: global examples per step.
    seed: the run's seed (the data order, `capsjax.data.batch_indices`).
    capacity: K, the rows of every chunk (steps per dispatch at most).
    mesh: data-parallel mesh (`capsjax.infra.parallel`); None: the default device.
    num_examples: the size of the set built on `split` (default len(split)).

  Raises:
    ValueError: batch_size is larger than the set.
  """

  def __init__(self, split: storage.Split, batch_size: int, seed: int, capacity: int,
               mesh: Mesh | None = None, num_examples: int | None = None):
    num_examples = len(split) if num_examples is None else num_examples
    order.steps_per_epoch(num_examples, batch_size)
    self.whole, self.split_rows = _placements(mesh)
    self.images, self.labels = parallel.put((split.images, split.labels), self.whole)
    self.num_examples, self.batch_size, self.seed, self.capacity = (
        num_examples, batch_size, seed, capacity)

  def chunk(self, first_step: int, num_steps: int) -> Chunk:
    """The `Chunk` of global steps first_step .. first_step + num_steps - 1: the resident split
    and the steps' [capacity, batch_size] indices (split over the mesh's `data` axis)."""
    rows = chunk_indices(self.num_examples, self.batch_size, self.seed, first_step, num_steps,
                         self.capacity)
    indices = parallel.from_parts(rows.shape, self.split_rows, lambda i: rows[i])
    return Chunk(self.images, self.labels, indices,
                 *parallel.put((np.int32(first_step), np.int32(num_steps)), self.whole))


class HostBatches:
  """The training split in host memory; each chunk's batches are copied to the device.

  Args:
    split: the stored training split, kept on the host.
    batch_size: global examples per step.
    seed: the run's seed (the data order, `capsjax.data.batch_indices`).
    capacity: K, the rows of every chunk (steps per dispatch at most).
    mesh: data-parallel mesh (`capsjax.infra.parallel`); None: the default device.
    num_examples: must be None or len(split): host batches gather stored rows.

  Raises:
    ValueError: num_examples other than len(split), or batch_size larger than the split.
  """

  def __init__(self, split: storage.Split, batch_size: int, seed: int, capacity: int,
               mesh: Mesh | None = None, num_examples: int | None = None):
    if num_examples not in (None, len(split)):
      raise ValueError(f"host batches gather stored rows: a set of {num_examples} examples "
                       f"built on {len(split)} stored ones needs the device pipeline.")
    order.steps_per_epoch(len(split), batch_size)
    self.split, self.batch_size, self.seed, self.capacity = split, batch_size, seed, capacity
    self.whole, self.split_rows = _placements(mesh)

  def chunk(self, first_step: int, num_steps: int) -> Chunk:
    """The `Chunk` of global steps first_step .. first_step + num_steps - 1: their batches
    gathered on the host as [capacity, batch_size, ...] (rows past num_steps unused), each process
    building only its devices' parts, and copied asynchronously (`indices` None)."""
    rows = chunk_indices(len(self.split), self.batch_size, self.seed, first_step, num_steps,
                         self.capacity)
    images, labels = self.split.images, self.split.labels
    # Only the [K, B] block of rows this process's devices train on is gathered.
    batch_images = parallel.from_parts(
        (*rows.shape, *images.shape[1:]), self.split_rows,
        lambda i: images[rows[i[:2]]][(slice(None), slice(None), *i[2:])])
    batch_labels = parallel.from_parts(rows.shape, self.split_rows, lambda i: labels[rows[i]])
    return Chunk(batch_images, batch_labels, None,
                 *parallel.put((np.int32(first_step), np.int32(num_steps)), self.whole))


def _placements(mesh: Mesh | None):
  """(whole arrays, [K, B, ...] arrays split on B): on `mesh`'s devices, else the default
  device."""
  if mesh is None:
    return None, None
  return parallel.replicated(mesh), parallel.batch_split(mesh, axis=1)


def resolve(pipeline: str, split: storage.Split, num_examples: int | None = None,
            device: jax.Device | None = None) -> str:
  """The source `make_source` runs for `pipeline` over a set of `num_examples` (default
  len(split)) built on `split`: `choose`, except that "auto" keeps a set larger than its stored
  split on the device.

  Raises:
    ValueError: `pipeline` is not one of PIPELINES.
  """
  kind = choose(pipeline, split, device)
  if pipeline == "auto" and num_examples not in (None, len(split)):
    kind = "device"
  return kind


def make_source(pipeline: str, split: storage.Split, batch_size: int, seed: int, capacity: int,
                mesh: Mesh | None = None, num_examples: int | None = None):
  """A `DeviceResident` or `HostBatches` source (see `resolve`) of chunks of up to `capacity`
  steps over a set of `num_examples` (default len(split)), on `mesh` (data parallel) if given.

  Raises:
    ValueError: an unknown `pipeline`, a batch larger than the set, or "host" for a set larger
      than its stored split.
  """
  kind = resolve(pipeline, split, num_examples, None if mesh is None else mesh.devices.flat[0])
  return (DeviceResident if kind == "device" else HostBatches)(split, batch_size, seed, capacity,
                                                                mesh, num_examples)
