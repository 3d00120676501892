"""Times jitted CapsNet train and eval steps on synthetic MNIST-shaped batches.

    python benchmarks/train_throughput.py --batch-size 128 --steps 10

Compile and a warm-up step are excluded; each timed step ends with `block_until_ready`. The last
stdout line is one JSON object: train_images_per_sec, eval_images_per_sec, batch_size, backend, ...
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from capsjax import archs, steps
from capsjax.config import TrainConfig
from capsjax.runtime import tune_host_allocator
from capsjax.train import create_state
from capsjax.archs import capsnet as capsnet_arch
from capsjax.augment import shift_transform


def build(batch_size: int, routing_iters: int, seed: int = 0, precision: str = "fp32"):
  """Paper's MNIST CapsNet + Adam (TrainConfig defaults), jitted steps, one synthetic batch."""
  config = TrainConfig(batch_size=batch_size, routing_iters=routing_iters, seed=seed,
                       precision=precision)
  settings = {"input_shape": [28, 28, 1], "num_classes": 10, "routing_iters": routing_iters}
  graphdef, state = create_state(settings, config)
  train_step = steps.make_train_step(graphdef, capsnet_arch.loss_fn(config.recon_weight),
                                     shift_transform(config.max_shift))
  eval_step = steps.make_eval_step(graphdef, capsnet_arch.loss_fn(config.recon_weight))
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, (batch_size,), dtype=np.int32)
  return state, train_step, eval_step, images, labels


def time_steps(batch_size: int, num_steps: int, routing_iters: int = 3, precision: str = "fp32"
               ) -> dict:
  """Median seconds per train and eval step after compile + one warm-up step."""
  state, train_step, eval_step, images, labels = build(batch_size, routing_iters,
                                                       precision=precision)
  images, labels = jax.device_put(images), jax.device_put(labels)
  valid = jax.device_put(np.ones(batch_size, bool))
  key = jax.random.key(0)
  state, m = train_step(state, images, labels, key)  # compile + warm-up
  jax.block_until_ready(m)
  train_times = []
  for i in range(num_steps):
    t0 = time.perf_counter()
    state, m = train_step(state, images, labels, jax.random.fold_in(key, i))
    jax.block_until_ready(m)
    train_times.append(time.perf_counter() - t0)
  jax.block_until_ready(eval_step(state, images, labels, valid))
  eval_times = []
  for _ in range(num_steps):
    t0 = time.perf_counter()
    jax.block_until_ready(eval_step(state, images, labels, valid))
    eval_times.append(time.perf_counter() - t0)
  train_s, eval_s = statistics.median(train_times), statistics.median(eval_times)
  return {"train_images_per_sec": batch_size / train_s, "eval_images_per_sec": batch_size / eval_s,
          "train_step_ms": 1e3 * train_s, "eval_step_ms": 1e3 * eval_s,
          "batch_size": batch_size, "steps": num_steps, "routing_iters": routing_iters,
          "precision": precision,
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--routing-iters", type=int, default=3)
  p.add_argument("--precision", choices=list(archs.PRECISIONS), default="fp32")
  args = p.parse_args(argv)
  if args.batch_size < 1 or args.steps < 1 or args.routing_iters < 1:
    p.error("--batch-size, --steps and --routing-iters must be positive integers")
  result = time_steps(args.batch_size, args.steps, args.routing_iters, args.precision)
  print(f"train: {result['train_images_per_sec']:.1f} images/s ({result['train_step_ms']:.1f} "
        f"ms/step)  eval: {result['eval_images_per_sec']:.1f} images/s")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
