"""Plots a run's metrics.jsonl (train loss, train and test accuracy vs step) to a PNG.

    pip install -e ".[plot]"
    python experiments/plot_metrics.py runs/quick/metrics.jsonl -o experiments/figures/quick_mnist.png \
        --title "capsjax quick preset on MNIST (2-core CPU)"

The same figure as `capsjax viz --figures curves` (`capsjax.viz.draw_curves`), for a metrics file
anywhere.
"""

import argparse
import sys
from pathlib import Path

from capsjax import viz
from capsjax.train.metrics import read_records


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("metrics", type=Path)
  p.add_argument("-o", "--output", type=Path, default=None, help="PNG (default: beside input)")
  p.add_argument("--title", default=None, help="figure title (default: the workdir's name)")
  args = p.parse_args(argv)
  if not args.metrics.is_file():
    raise SystemExit(f"plot_metrics: error: {args.metrics} is not a file (expected "
                     "WORKDIR/metrics.jsonl)")
  train, test = read_records(args.metrics)
  if not train:
    raise SystemExit(f"plot_metrics: error: no train records in {args.metrics}")
  out = args.output or args.metrics.with_suffix(".png")
  viz.draw_curves(train, test, out, args.title or f"capsjax: {args.metrics.parent.name}")
  print(out)


if __name__ == "__main__":
  sys.exit(main())
