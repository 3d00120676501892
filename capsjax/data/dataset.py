"""What the training loop needs from a dataset: the `Dataset` record of pure functions.

The loop (`capsjax.train`) never asks which dataset it trains on. A dataset is the stored
examples it is built from (a TFDS split, or affNIST's `.mat` files) plus a pure JAX function
that turns example indices into network inputs and targets inside the compiled step:

    builder(key, stored_images, stored_labels, index [B]) -> (inputs float [B,H,W,C], targets)

so random shifts, MultiMNIST pairing and affine warps run on any backend, and the data a step
sees is a pure function of (seed, step). A set may be larger than what is stored (MultiMNIST:
1,000 pairs per stored digit); `size` says how many examples it has.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capsjax.data import storage
from capsjax.nn.inputs import to_float
from capsjax.nn.objective import LossFn

# (key or None, stored images [N,...] uint8, stored labels [N], index [B] int) ->
# (inputs float32 [B,H,W,C] in [0, 1], targets). `key` is the training step's key (None when
# evaluating: test sets are fixed).
ExampleBuilder = Callable[[jax.Array | None, jnp.ndarray, jnp.ndarray, jnp.ndarray],
                          tuple[Any, Any]]


class Dataset(NamedTuple):
  """A dataset the training loop can train and evaluate on.

  Attributes:
    name: what `--dataset` and a run's config call it.
    description: one line saying what the set is (for readers and listings).
    splits: the splits it has ("train", "test"; an evaluation-only set: "test" alone).
    load: `load(split, data_dir, limit) -> storage.Split`, the stored examples (the first `limit`).
    size: `size(split, stored) -> int`, the number of examples of the set built on `stored`.
    builder: `builder(config, split, stored) -> ExampleBuilder`, the function that builds the
      split's examples inside the compiled step (training: `split` is "train").
    loss: `loss(arch, config) -> LossFn` over this dataset's targets, for the network `arch`
      (a `capsjax.train.archs.Arch`) and the run's TrainConfig (ValueError, one line, for
      a network it cannot train).
    host_batches: whether a training example is one stored row (`index` < len(stored)), so the
      host pipeline may gather the rows and pass them as the stored split itself.
    uses_augmentation: whether its training examples go through the run's augmentation
      (`TrainConfig.augmentation`).
    reads_data_dir: whether it is read from the TFDS data dir (an image folder or arrays file
      is not: no data dir is needed).
    options: the data settings of `TrainConfig` it takes ("image_size", "test_fraction"); the
      others must stay unset.
  """

  name: str
  description: str
  splits: tuple[str, ...]
  load: Callable[[str, Any, int | None], storage.Split]
  size: Callable[[str, storage.Split], int]
  builder: Callable[[Any, str, storage.Split], ExampleBuilder]
  loss: Callable[[Any, Any], LossFn]
  host_batches: bool = True
  uses_augmentation: bool = False
  reads_data_dir: bool = True
  options: tuple[str, ...] = ()


def gather(transform: Callable | None = None, test: Callable | None = None) -> ExampleBuilder:
  """The `ExampleBuilder` of a set whose example i is stored row i: rows `index`, as float32 in
  [0, 1], then `transform(key, images, labels)` when training, i.e. when the builder gets a key
  (e.g. `augment.shift_transform`); then `test(images, labels)`, always (a recipe's test half,
  `augment.Preprocessing.test`, for the test builder); None: the rows alone."""

  def build(key, images, labels, index):
    x = to_float(jnp.take(images, index, axis=0))
    y = jnp.take(labels, index, axis=0)
    if transform is not None and key is not None:
      x, y = transform(key, x, y)
    if test is not None:
      x, y = test(x, y)
    return x, y

  return build


def input_shape(builder: ExampleBuilder, stored: storage.Split) -> tuple[int, ...]:
  """(H, W, C) of the network inputs `builder` builds from `stored` (traced, not run)."""
  x, _ = jax.eval_shape(lambda i, l: builder(jax.random.key(0), i, l, jnp.zeros(1, jnp.int32)),
                        stored.images, stored.labels)
  return tuple(int(s) for s in x.shape[1:])


def check_test_examples(test_examples) -> None:
  """Checks a test-example count as `capsjax eval` and `viz` take it.

  Raises:
    ValueError: (one line) `test_examples` is not None, "all" or a positive int (a bool is
      refused).
  """
  if not (test_examples is None or test_examples == "all" or (
      isinstance(test_examples, int) and not isinstance(test_examples, bool)
      and test_examples > 0)):
    raise ValueError(f"test_examples must be a positive integer or 'all', got "
                     f"{test_examples!r}.")


def subset(size: int, count: int | None, what: str = "the test set") -> np.ndarray:
  """[count] int64 example indices spread evenly over a set of `size` (all of it for None).

  Example floor(j * size / count) for j < count, so a subset of a set built k-per-stored-example
  covers every stored example alike.

  Args:
    size: the number of examples of the set.
    count: how many to take; None: all `size`.
    what: the set's name in the error message.

  Raises:
    ValueError: count is larger than size.
  """
  if count is None:
    return np.arange(size, dtype=np.int64)
  if count > size:
    raise ValueError(f"--test-examples {count} is more than the {size:,} examples of {what}; "
                     f"expected at most {size}.")
  return (np.arange(count, dtype=np.int64) * size) // count
