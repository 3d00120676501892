"""Evaluation throughput of the paper's CapsNet at several batch sizes, through the real eval path.

    python benchmarks/eval_batch_size.py --data-dir ../shared/tensorflow_datasets

`capsjax.train.evaluate` (the function `capsjax eval` and the training loop call) over the first
`--images` MNIST test images, at each batch size; the last batch is padded as in a real
evaluation. Each batch size is compiled and run once untimed, then timed in `--rounds` rounds
that visit the sizes in alternating order (the VM's speed drifts); the median round counts. The
last stdout line is one JSON object: {"images_per_sec": {batch: ...}, "best": batch, ...}. This is
how `capsjax.steps.default_eval_batch_size` was chosen for the CPU.
"""

import argparse
import json
import statistics
import time

import jax
from flax import nnx

from capsjax import data, steps
from capsjax.config import TrainConfig
from capsjax.runtime import tune_host_allocator
from capsjax.train import create_model, evaluate
from capsjax.archs import capsnet as capsnet_arch


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR)")
  p.add_argument("--batch-sizes", default="16,32,64,100,128,250,500")
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args(argv)
  sizes = [int(b) for b in args.batch_sizes.split(",")]
  if min(sizes) < 1 or args.images < 1 or args.rounds < 1:
    p.error("--batch-sizes, --images and --rounds must be positive")
  split = data.load_split("mnist", "test", args.data_dir, limit=args.images)
  settings = {"input_shape": [28, 28, 1], "num_classes": 10}
  graphdef, state = nnx.split(create_model(settings, TrainConfig()))
  eval_step = steps.make_eval_step(graphdef, capsnet_arch.loss_fn(0.0005))
  for b in sizes:  # compile and warm up each size
    evaluate(eval_step, state, split, b)
  seconds = {b: [] for b in sizes}
  for r in range(args.rounds):
    for b in (sizes if r % 2 == 0 else sizes[::-1]):
      t0 = time.perf_counter()
      evaluate(eval_step, state, split, b)  # ends with the metrics on the host
      seconds[b].append(time.perf_counter() - t0)
  rate = {b: len(split) / statistics.median(s) for b, s in seconds.items()}
  for b in sizes:
    print(f"batch {b:4d}: {rate[b]:7.1f} images/s  (rounds: "
          f"{', '.join(f'{len(split) / s:.1f}' for s in seconds[b])})")
  print(json.dumps({"images_per_sec": rate, "best": max(rate, key=rate.get),
                    "images": len(split), "rounds": args.rounds,
                    "backend": jax.default_backend(),
                    "device": str(jax.devices()[0].device_kind)}))


if __name__ == "__main__":
  main()
