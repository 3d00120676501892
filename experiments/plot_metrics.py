"""Plots a run's metrics.jsonl (train loss, train and test accuracy vs step) to a PNG.

    pip install -e ".[plot]"
    python experiments/plot_metrics.py runs/quick/metrics.jsonl -o experiments/figures/quick_mnist.png \
        --title "capsjax quick preset on MNIST (2-core CPU)"
"""

import argparse
import json
import sys
from pathlib import Path


def load(path: Path) -> tuple[list[dict], list[dict]]:
  """(train records, test records) from a metrics.jsonl; a resumed run's repeats keep the last."""
  if not path.is_file():
    raise SystemExit(f"plot_metrics: error: {path} is not a file (expected WORKDIR/metrics.jsonl)")
  train, test = {}, {}
  for line in path.read_text().splitlines():
    rec = json.loads(line)
    (train if rec["split"] == "train" else test)[rec["step"]] = rec
  return [train[k] for k in sorted(train)], [test[k] for k in sorted(test)]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("metrics", type=Path)
  p.add_argument("-o", "--output", type=Path, default=None, help="PNG (default: beside input)")
  p.add_argument("--title", default=None, help="figure title (default: the workdir's name)")
  args = p.parse_args(argv)
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train, test = load(args.metrics)
  if not train:
    raise SystemExit(f"plot_metrics: error: no train records in {args.metrics}")
  steps = [r["step"] for r in train]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  ax_loss.plot(steps, [r["loss"] for r in train], label="total")
  ax_loss.plot(steps, [r["margin_loss"] for r in train], label="margin")
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("step")
  ax_loss.set_title("train loss (per example)")
  ax_loss.legend()
  ax_acc.plot(steps, [100 * r["train_accuracy"] for r in train], label="train (batch)", alpha=0.6)
  if test:
    ax_acc.plot([r["step"] for r in test], [100 * r["test_accuracy"] for r in test], "o-",
                label="test (full split)")
    last = test[-1]
    ax_acc.annotate(f"{100 * last['test_accuracy']:.2f}%", (last["step"],
                    100 * last["test_accuracy"]), textcoords="offset points", xytext=(-40, -15))
  ax_acc.set_ylim(90, 100)
  ax_acc.set_xlabel("step")
  ax_acc.set_title("accuracy (%)")
  ax_acc.grid(alpha=0.3)
  ax_acc.legend(loc="lower right")
  fig.suptitle(args.title or f"capsjax: {args.metrics.parent.name}")
  fig.tight_layout()
  out = args.output or args.metrics.with_suffix(".png")
  fig.savefig(out, dpi=100)
  print(out)


if __name__ == "__main__":
  sys.exit(main())
