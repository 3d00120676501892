"""Named random streams of a run's seed: every JAX random draw of capsjax comes from exactly one.

A stream is `fold_in(key(seed), tag(name))`, the tag a 31-bit hash of the stream's name, and
its draws are then folded by step or example index:

- `init` (the run's seed; NNX's own counter): parameter initialisation,
  `nnx.Rngs(init_rngs_key(seed))`;
- `data` (the run's seed; global step): each training step's data key: the random shifts (split
  over the batch), expanded MNIST's translations;
- `dropout` (the run's seed; global step): each training step's dropout key (the baseline CNN);
- `multimnist/train` (the run's seed; example index): MultiMNIST's training pairs, each a
  function of (seed, index);
- `multimnist/test`, `affnist_style/test` (TEST_SEED; example index): the built test sets, the
  same in every run.

So no two uses share a key: the dropout key of step s is not the shift key of any image of
step s, step 0's data key is not the key that initialised Conv1, and test example i is not
training step i of a seed-0 run (each of which held before; `tests/test_streams.py`).

Data *order* (which stored examples a step sees) is drawn by numpy from (seed, epoch) in
`capsjax.data.batch_indices`, a generator of its own.
"""

import zlib
from typing import NamedTuple

import jax

# The seed of the built test sets (MultiMNIST pairs, affNIST-style warps): every run, whatever
# its own seed, is evaluated on the same examples.
TEST_SEED = 0
# The streams of a training run; the test sets' streams are named "<dataset>/test".
TRAINING = ("init", "data", "dropout")


def tag(name: str) -> int:
  """The 31-bit tag of stream `name` (CRC-32 of "capsjax/<name>"), fixed across versions."""
  return zlib.crc32(f"capsjax/{name}".encode()) & 0x7FFFFFFF


def stream(seed: int, name: str) -> jax.Array:
  """The base key of stream `name` of `seed`: `fold_in(key(seed), tag(name))` (a typed key)."""
  return jax.random.fold_in(jax.random.key(seed), tag(name))


def eval_stream(dataset: str) -> jax.Array:
  """The base key of `dataset`'s built test set: stream "<dataset>/test" of TEST_SEED."""
  return stream(TEST_SEED, f"{dataset}/test")


class StepKeys(NamedTuple):
  """The keys of one training step (or, as base keys, of a run: see `run_keys`).

  Attributes:
    data: augmentation and example building (random shifts, translations).
    dropout: the network's dropout (the baseline CNN).
  """

  data: jax.Array  # augmentation / example building
  dropout: jax.Array  # the network's dropout


def run_keys(seed: int) -> StepKeys:
  """The base keys of a run's per-step streams ("data", "dropout")."""
  return StepKeys(stream(seed, "data"), stream(seed, "dropout"))


def at_step(base: StepKeys, step) -> StepKeys:
  """The keys of global 0-based training step `step` (an int or a traced int32 scalar)."""
  return StepKeys(jax.random.fold_in(base.data, step), jax.random.fold_in(base.dropout, step))


def init_rngs_key(seed: int) -> jax.Array:
  """The key a network of seed `seed` is initialised from (`nnx.Rngs(init_rngs_key(seed))`)."""
  return stream(seed, "init")
