"""Evaluation throughput of the paper's CapsNet at several batch sizes, through the real eval path.

    python benchmarks/eval_batch_size.py --data-dir ../shared/tensorflow_datasets

What `capsjax eval` (`evaluate.evaluate_checkpoint`) and the training loop run:
`evaluate.evaluate_indexed` of `steps.make_eval_step(graphdef, loss_fn, builder)` over the test
split resident on the device, here `--images` examples of `--dataset`'s test set (default MNIST:
its first N images; a built set: N spread over it), at each batch size; the last batch is padded
as in a real evaluation. Each batch size is compiled and run once untimed, then timed in
`--rounds` rounds that visit the sizes in alternating order (the VM's speed drifts); the median
round counts. The last stdout line is one JSON object: {"images_per_sec": {batch: ...},
"best": batch, ...}. This is how `capsjax.train.steps.default_eval_batch_size` was chosen for the CPU.
"""

import argparse
import json
import statistics
import time

import jax
from flax import nnx

from capsjax.data import datasets
from capsjax.infra.runtime import tune_host_allocator
from capsjax.train import archs, steps
from capsjax.train.config import TrainConfig
from capsjax.train.evaluate import evaluate_indexed
from capsjax.train.model_state import create_model, model_settings


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR)")
  p.add_argument("--batch-sizes", default="16,32,64,100,128,250,500")
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--dataset", default="mnist", choices=datasets.available("test"),
                 help="test set (default mnist)")
  args = p.parse_args(argv)
  try:
    sizes = [int(b) for b in args.batch_sizes.split(",")]
  except ValueError:
    p.error(f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}")
  if min(sizes) < 1 or args.images < 1 or args.rounds < 1:
    p.error("--batch-sizes, --images and --rounds must be positive")
  # As `evaluate.evaluate_checkpoint` builds the evaluation of a run of the TrainConfig defaults.
  config = TrainConfig()
  dataset = datasets.get(args.dataset, "test")
  try:
    stored = dataset.load("test", args.data_dir, args.images if dataset.host_batches else None)
    indices = datasets.subset(dataset.size("test", stored), args.images,
                              f"the {args.dataset} test set")
  except ValueError as e:
    p.error(str(e))
  examples = dataset.builder(config, "test", stored)
  settings = model_settings(config, stored, datasets.input_shape(examples, stored))
  graphdef, state = nnx.split(create_model(settings, config))
  eval_step = steps.make_eval_step(graphdef, dataset.loss(archs.get(config.arch), config),
                                   examples)
  on_device = jax.device_put((stored.images, stored.labels))
  for b in sizes:  # compile and warm up each size
    evaluate_indexed(eval_step, state, on_device, indices, b)
  seconds = {b: [] for b in sizes}
  for r in range(args.rounds):
    for b in (sizes if r % 2 == 0 else sizes[::-1]):
      t0 = time.perf_counter()
      evaluate_indexed(eval_step, state, on_device, indices, b)  # ends with the metrics on the host
      seconds[b].append(time.perf_counter() - t0)
  n = len(indices)
  rate = {b: n / statistics.median(s) for b, s in seconds.items()}
  for b in sizes:
    print(f"batch {b:4d}: {rate[b]:7.1f} images/s  (rounds: "
          f"{', '.join(f'{n / s:.1f}' for s in seconds[b])})")
  print(json.dumps({"images_per_sec": rate, "best": max(rate, key=rate.get),
                    "images": n, "dataset": args.dataset, "rounds": args.rounds,
                    "backend": jax.default_backend(),
                    "device": str(jax.devices()[0].device_kind)}))


if __name__ == "__main__":
  main()
