"""The programs `capsjax train` and `capsjax eval` run, called the way they call them, for unit
tests on a tiny network: the training loop's K-step chunk (`steps.make_train_chunk` over the
split resident on the device, as `capsjax.train.loop` runs it) and the evaluation over the
device-resident test split (`evaluate_indexed`, as `capsjax.train.evaluate.evaluate_checkpoint`)."""

import copy

import jax
import numpy as np

from capsjax import data
from capsjax.core import streams
from capsjax.data import datasets, pipeline
from capsjax.train import steps
from capsjax.train.evaluate import evaluate_indexed


class Trainer:
  """`steps.make_train_chunk(graphdef, loss_fn, builder=builder)` (default: the stored rows,
  `datasets.gather()`) over `split` on the device (`pipeline.DeviceResident`, batches of
  `batch_size` drawn by `seed`), with the run keys of `seed`: one compilation serves every call
  of up to `capacity` steps."""

  def __init__(self, graphdef, loss_fn, split: data.Split, batch_size: int, *, seed: int = 0,
               builder=None, capacity: int = 8):
    self.program = steps.make_train_chunk(graphdef, loss_fn,
                                          builder=builder or datasets.gather())
    self.split, self.batch_size, self.capacity = split, batch_size, capacity
    self.source = pipeline.DeviceResident(split, batch_size, seed, capacity)
    self.keys = streams.run_keys(seed)

  def reseeded(self, seed: int) -> "Trainer":
    """The same program (no new compilation) on the batches and keys of run seed `seed`."""
    other = copy.copy(self)
    other.source = pipeline.DeviceResident(self.split, self.batch_size, seed, self.capacity)
    other.keys = streams.run_keys(seed)
    return other

  def __call__(self, state, first_step: int, num_steps: int):
    """Global steps first_step, ..., first_step + num_steps - 1 from `state` (donated) ->
    (state, the chunk's `steps.ChunkResult` on the host)."""
    state, result = self.program(state, *self.source.chunk(first_step, num_steps), self.keys)
    return state, jax.device_get(result)


def evaluate(graphdef, state, loss_fn, split: data.Split, batch_size: int, indices=None,
             builder=None) -> dict:
  """`evaluate_indexed` of `steps.make_eval_step(graphdef, loss_fn, builder)` (default:
  the stored rows) over examples `indices` (default: all) of `split` put on the device."""
  eval_step = steps.make_eval_step(graphdef, loss_fn, builder or datasets.gather())
  indices = np.arange(len(split)) if indices is None else np.asarray(indices)
  return evaluate_indexed(eval_step, state, jax.device_put((split.images, split.labels)),
                                indices, batch_size)
