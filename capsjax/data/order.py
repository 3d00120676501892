"""Data order: which stored examples each training step reads, a pure function of (seed, step).

That purity is what makes a resumed run reproduce the uninterrupted run's batches, whichever
input pipeline (`capsjax.data.pipeline`) and however many processes run it.
"""

import functools

import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped; the permutation changes every epoch).

  Raises:
    ValueError: batch_size is larger than num_examples.
  """
  if batch_size > num_examples:
    raise ValueError(f"batch size {batch_size} is larger than the dataset ({num_examples}).")
  return num_examples // batch_size


@functools.lru_cache(maxsize=2)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of global training step `step`: [batch_size] int.

  Epoch e = step // steps_per_epoch uses the permutation drawn from (seed, e) by numpy.

  Args:
    num_examples: size of the (stored or built) training set.
    batch_size: examples per step.
    seed: the run's seed.
    step: global 0-based training step.

  Raises:
    ValueError: batch_size is larger than num_examples.
  """
  epoch, pos = divmod(step, steps_per_epoch(num_examples, batch_size))
  return _epoch_permutation(num_examples, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]
