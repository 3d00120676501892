"""Makes a shipped pretrained network (capsjax/pretrained/NAME.json + NAME.npz) from a run.

    python experiments/export_pretrained.py --workdir runs/emc --name efficient_mnist \\
        --preset efficient_mnist_cpu --data-dir ../shared/tensorflow_datasets

Reads the run's newest checkpoint, keeps the network without its decoder (for Efficient-CapsNet:
the 161,824 parameters and the batch-norm statistics, ~650 KB; its decoder would add 1.4M
parameters, past the 2 MB a shipped file may take), writes the two files, then loads them back
with `capsjax.load_pretrained` and classifies the 10,000 MNIST test images with it exactly as a
user would (`TrainedModel.predict`), checking that every class equals the full run's. The
accuracy on all 10,000 and on the first 1,000 goes into the record (tests/ checks the second).
Prints one JSON line (the record's accuracy and sizes) last.
"""

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

import capsjax
from capsjax.infra import pretrained
from capsjax.data import storage

ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _cpu() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _run_summary(workdir: Path) -> dict:
  """From the run's metrics.jsonl: seconds from its start to its last train record (test
  evaluations included), the median images/s of its train records after the first (which
  includes compilation) and its final test accuracy."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r.get("split") == "train"]
  test = [r for r in records if r.get("split") == "test"]
  return {"elapsed_s_to_last_train_record": round(train[-1]["elapsed_s"], 1),
          "median_images_per_sec": round(float(np.median([r["images_per_sec"]
                                                          for r in train[1:]])), 1),
          "final_test_accuracy_of_the_run": test[-1]["test_accuracy"] if test else None}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, type=Path)
  parser.add_argument("--name", required=True)
  parser.add_argument("--preset", required=True, help="the preset the run was trained with")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", type=Path, default=Path(pretrained.DIRECTORY))
  parser.add_argument("--trained-on", default=None,
                      help="when and where it was trained (default: the date and this CPU)")
  args = parser.parse_args()

  run = capsjax.load(args.workdir)
  state = run.state
  arrays = {k: v for k, v in pretrained.arrays_of(state).items()
            if not k.startswith("decoder/")}
  settings = {**run.settings, "reconstruction": False}
  config = dataclasses.asdict(run.config)
  record = {
      "name": args.name,
      "description": f"{run.arch.name} trained on {run.config.dataset} with the "
                     f"{args.preset} preset, shipped without its decoder ({run.arch.description})",
      "preset": args.preset,
      "config": config,
      "model": settings,
      "step": run.step,
      "parameters": int(sum(v.size for k, v in arrays.items() if "/mean" not in k
                            and "/var" not in k)),
      "trained": {"on": args.trained_on or f"{datetime.date.today()}, {_cpu()}",
                  **_run_summary(args.workdir)},
      "source": {"commit": _commit(), "workdir": str(args.workdir),
                 "exported": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")},
  }
  pretrained.write(args.out, args.name, record, arrays)

  data_dir = storage.resolve_data_dir(args.data_dir)
  test = storage.load_split(run.config.dataset, "test", data_dir)
  shipped = capsjax.load_pretrained(args.name, directory=args.out)
  classes = shipped.predict(test.images).classes
  full = run.predict(test.images).classes
  if not np.array_equal(classes, full):
    print(f"the shipped network's classes differ from the run's on "
          f"{int(np.sum(classes != full))} images", file=sys.stderr)
    return 1
  right = classes == np.asarray(test.labels)
  record["accuracy"] = {"test": float(np.mean(right)), "test_examples": int(len(right)),
                        "first_1000": float(np.mean(right[:1000]))}
  json_path, npz_path = pretrained.write(args.out, args.name, record, arrays)
  print(json.dumps({"accuracy": record["accuracy"], "parameters": record["parameters"],
                    "npz_bytes": npz_path.stat().st_size, "json": str(json_path)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
