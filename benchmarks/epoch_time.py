"""Seconds per epoch of a preset through the real training loop (`capsjax.train.loop.train`).

    python benchmarks/epoch_time.py --config paper --batch-size 128 --epochs 2
    python benchmarks/epoch_time.py --config quick --max-steps 60 --pipeline host   # a smoke run
    python benchmarks/epoch_time.py --config multimnist --max-steps 300 --test-examples 1000

Trains the preset on the real training split into a temporary workdir (data loading, the input
pipeline, K steps per dispatch, metrics.jsonl, progress all as in `capsjax train`; no evaluation
or checkpoint until the end), and times it from the metrics records: the first log window holds
the compilation and is left out, so seconds per epoch = (elapsed between the first and the last
train record) / (steps between them) x steps per epoch, an epoch being the preset's training set
(MultiMNIST: 1,000 pairs per stored digit). The final evaluation covers --test-examples (default
10,000) examples of the test set, not the preset's count (MultiMNIST's: all 10M pairs). The last
stdout line is one JSON object: seconds_per_epoch, images_per_sec, steps_timed, first_window_s
(compilation + the first window), final test accuracy, backend, device, pipeline, ...
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import jax

from capsjax import data
from capsjax.core.errors import one_line
from capsjax.data import datasets, pipeline
from capsjax.infra.runtime import tune_host_allocator
from capsjax.train import archs, presets
from capsjax.train import config as config_lib
from capsjax.train.loop import train


def measure(config: config_lib.TrainConfig, data_dir: str | None, workdir: Path,
            train_examples: int | None = None, test_examples: int | None = None) -> dict:
  """Trains `config` into `workdir` (on the first `train_examples` stored training examples,
  evaluated at the end on `test_examples` test examples; None: all, the preset's) and returns
  the timing of its train records."""
  final = train(config, workdir, data_dir, train_limit=train_examples, test_limit=test_examples,
                progress=False)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["split"] == "train"]
  if len(train_records) < 2:
    raise SystemExit(f"epoch_time: only {len(train_records)} train record(s); run at least two "
                     f"log windows (--log-every {config.log_every}).")
  first, last = train_records[0], train_records[-1]
  steps_timed = last["step"] - first["step"]
  seconds = last["elapsed_s"] - first["elapsed_s"]
  # The training set as the loop sees it: built on the stored split (MultiMNIST: 1,000 pairs
  # per stored digit), so an epoch is the set's size, not the stored split's.
  dataset = datasets.get(config.dataset, "train")
  stored = dataset.load("train", data_dir, train_examples)
  size = dataset.size("train", stored)
  per_epoch = data.steps_per_epoch(size, config.batch_size)
  return {"seconds_per_epoch": seconds / steps_timed * per_epoch,
          "images_per_sec": steps_timed * config.batch_size / seconds,
          "steps_per_epoch": per_epoch, "steps_timed": steps_timed, "seconds_timed": seconds,
          "first_window_s": first["elapsed_s"], "first_window_steps": first["step"],
          "total_steps": final["step"], "test_accuracy": final["test_accuracy"],
          "batch_size": config.batch_size, "log_every": config.log_every,
          "steps_per_dispatch": config.steps_per_dispatch or config.log_every,
          "pipeline": pipeline.resolve(config.pipeline, stored, size), "dataset": config.dataset,
          "training_set_size": size, "test_examples": final["test_examples"],
          "precision": config.precision,
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="paper", help="preset (capsjax/train/presets.py)")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--max-steps", type=int, default=None, help="instead of --epochs")
  p.add_argument("--log-every", type=int, default=None, help="default: the preset's")
  p.add_argument("--steps-per-dispatch", type=int, default=None, help="default: --log-every")
  p.add_argument("--pipeline", choices=pipeline.PIPELINES, default="auto")
  p.add_argument("--precision", choices=list(archs.PRECISIONS), default="fp32")
  p.add_argument("--train-examples", type=int, default=None,
                 help="first N stored examples only")
  p.add_argument("--test-examples", type=int, default=10_000,
                 help="the final evaluation's test examples (default 10,000)")
  p.add_argument("--model", default=None, metavar="JSON",
                 help='network settings over the preset\'s, e.g. \'{"digit_dim": 8}\'')
  p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR)")
  p.add_argument("--workdir", default=None, help="keep the run here (default: a temporary one)")
  args = p.parse_args(argv)
  for name in ("batch_size", "epochs", "max_steps", "log_every", "steps_per_dispatch",
               "train_examples", "test_examples"):
    value = getattr(args, name)
    if value is not None and value < 1:
      p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
  try:
    model = {} if args.model is None else json.loads(args.model)
  except ValueError as e:
    p.error(f"--model must be a JSON object, got {args.model!r} ({e})")
  if not isinstance(model, dict):
    p.error(f"--model must be a JSON object, got {args.model!r}")
  try:
    config = presets.get(args.config)
    config = dataclasses.replace(
        config, model={**config.model, **model},
        batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
        log_every=args.log_every or config.log_every, steps_per_dispatch=args.steps_per_dispatch,
        pipeline=args.pipeline, precision=args.precision, eval_every=0,
        checkpoint_every=10**9).validate()
    data.resolve_data_dir(args.data_dir)
  except ValueError as e:
    p.error(str(e))
  with tempfile.TemporaryDirectory(prefix="epoch_time_") as tmp:
    workdir = Path(args.workdir) if args.workdir else Path(tmp) / "run"
    try:
      result = {"config": args.config, **measure(config, args.data_dir, workdir,
                                                  args.train_examples, args.test_examples)}
    except ValueError as e:  # bad input the training loop found (e.g. --pipeline host for a
      raise SystemExit(f"epoch_time: error: {one_line(e)}") from None  # set built on the device)
  print(f"{result['seconds_per_epoch']:.2f} s/epoch, {result['images_per_sec']:.0f} images/s "
        f"({result['steps_timed']} steps timed after compilation; {result['backend']}, "
        f"{result['device']}, pipeline {result['pipeline']})")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
