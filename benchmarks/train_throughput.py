"""Times the programs `capsjax train` runs, on a synthetic MNIST-shaped batch.

    python benchmarks/train_throughput.py --batch-size 128 --steps 10 [--steps-per-dispatch K]

The paper's CapsNet + Adam (TrainConfig defaults) on MNIST's training examples (random shift)
built from a synthetic split of one batch resident on the device: training is the loop's K-step
program (`steps.make_train_chunk`, K = --steps-per-dispatch, default 1: one step per dispatch),
evaluation the eval step `capsjax eval` runs (`steps.make_eval_step` over the device-resident
test split). Compile and a warm-up dispatch are excluded; each timed dispatch ends with
`block_until_ready` (a step's time: its dispatch's / K). The last stdout line is one JSON object:
train_images_per_sec, eval_images_per_sec, batch_size, steps_per_dispatch, backend, ...
"""

import argparse
import json
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from capsjax import data
from capsjax.core import streams
from capsjax.data import datasets, pipeline
from capsjax.infra.runtime import tune_host_allocator
from capsjax.train import archs, steps
from capsjax.train.config import TrainConfig
from capsjax.train.model_state import create_state, model_settings


class Bench(NamedTuple):
  """The loop's programs for one synthetic batch, as `capsjax train` builds them."""

  state: Any  # (model, optimizer) state
  train_chunk: Callable  # steps.make_train_chunk over MNIST's training examples
  source: pipeline.DeviceResident  # the batch as the training split on the device
  keys: Any  # the run's base keys (streams.run_keys)
  eval_step: Callable  # steps.make_eval_step over MNIST's test examples
  stored: tuple  # (images, labels) on the device: the batch as the test split
  split: data.Split  # the batch on the host: uint8 [B, 28, 28, 1], labels [B]


def build(batch_size: int, routing_iters: int, seed: int = 0, precision: str = "fp32",
          steps_per_dispatch: int = 1) -> Bench:
  """Paper's MNIST CapsNet + Adam (TrainConfig defaults) and the loop's programs (chunks of up
  to `steps_per_dispatch` steps) on one synthetic batch."""
  config = TrainConfig(batch_size=batch_size, routing_iters=routing_iters, seed=seed,
                       precision=precision)
  rng = np.random.default_rng(seed)
  split = data.Split(rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
                     rng.integers(0, 10, (batch_size,), dtype=np.int32), 10)
  mnist = datasets.get("mnist")
  graphdef, state = create_state(model_settings(config, split), config)
  loss_fn = mnist.loss(archs.get(config.arch), config)
  train_chunk = steps.make_train_chunk(graphdef, loss_fn,
                                       builder=mnist.builder(config, "train", split))
  eval_step = steps.make_eval_step(graphdef, loss_fn, mnist.builder(config, "test", split))
  return Bench(state, train_chunk,
               pipeline.DeviceResident(split, batch_size, seed, steps_per_dispatch),
               jax.device_put(streams.run_keys(seed)), eval_step,
               jax.device_put((split.images, split.labels)), split)


def run_chunk(bench: Bench, state, chunk: pipeline.Chunk):
  """One dispatch of the training program on `chunk` (`bench.source.chunk(...)`), waited for;
  returns the new state (SystemExit if a step was non-finite)."""
  state, result = bench.train_chunk(state, *chunk, bench.keys)
  if int(jax.device_get(result.bad_step)):
    raise SystemExit(f"train_throughput: step {int(result.bad_step)} was non-finite.")
  return state


def time_steps(batch_size: int, num_steps: int, routing_iters: int = 3, precision: str = "fp32",
               steps_per_dispatch: int = 1) -> dict:
  """Median seconds per train step (dispatches of up to `steps_per_dispatch` steps) and per eval
  batch, after compile + one warm-up dispatch of each."""
  bench = build(batch_size, routing_iters, precision=precision,
                steps_per_dispatch=steps_per_dispatch)
  # Each dispatch's data is prepared before its timer starts, as the loop prepares the next
  # chunk while the device runs the current one.
  state = run_chunk(bench, bench.state, bench.source.chunk(0, steps_per_dispatch))  # compile
  train_times = []
  end = steps_per_dispatch + num_steps
  for start in range(steps_per_dispatch, end, steps_per_dispatch):
    k = min(steps_per_dispatch, end - start)
    chunk = bench.source.chunk(start, k)
    t0 = time.perf_counter()
    state = run_chunk(bench, state, chunk)
    train_times.append((time.perf_counter() - t0) / k)
  index = jax.device_put(np.arange(batch_size, dtype=np.int32))
  valid = jax.device_put(np.ones(batch_size, bool))
  jax.block_until_ready(bench.eval_step(state, *bench.stored, index, valid))
  eval_times = []
  for _ in range(num_steps):
    t0 = time.perf_counter()
    jax.block_until_ready(bench.eval_step(state, *bench.stored, index, valid))
    eval_times.append(time.perf_counter() - t0)
  train_s, eval_s = statistics.median(train_times), statistics.median(eval_times)
  return {"train_images_per_sec": batch_size / train_s, "eval_images_per_sec": batch_size / eval_s,
          "train_step_ms": 1e3 * train_s, "eval_step_ms": 1e3 * eval_s,
          "batch_size": batch_size, "steps": num_steps, "steps_per_dispatch": steps_per_dispatch,
          "routing_iters": routing_iters, "precision": precision,
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--routing-iters", type=int, default=3)
  p.add_argument("--precision", choices=list(archs.PRECISIONS), default="fp32")
  p.add_argument("--steps-per-dispatch", type=int, default=1,
                 help="training steps per dispatch, K (the loop's: TrainConfig.steps_per_dispatch, "
                      "default its log_every)")
  args = p.parse_args(argv)
  if min(args.batch_size, args.steps, args.routing_iters, args.steps_per_dispatch) < 1:
    p.error("--batch-size, --steps, --routing-iters and --steps-per-dispatch must be positive "
            "integers")
  result = time_steps(args.batch_size, args.steps, args.routing_iters, args.precision,
                      args.steps_per_dispatch)
  print(f"train: {result['train_images_per_sec']:.1f} images/s ({result['train_step_ms']:.1f} "
        f"ms/step)  eval: {result['eval_images_per_sec']:.1f} images/s")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
