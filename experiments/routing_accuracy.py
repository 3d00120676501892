"""Trains the `quick` preset once per routing rule on MNIST and tabulates test accuracy.

    python experiments/routing_accuracy.py --data-dir ../shared/tensorflow_datasets \
        --update-readme

Each rule trains in its own workdir (`--out`/runs/<rule>) with the same seed, data order and
schedule; only the routing differs. Results go to `--out`/results.json and a Markdown table
(`--out`/table.md); `--update-readme` also writes the table between the results page's
(docs/results.md) `<!-- routing-accuracy:start -->` and `<!-- routing-accuracy:end -->` markers.
A rule whose result is already in results.json is skipped (delete it, or pass --force, to re-run).
"""

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import jax

from capsjax import routing
from capsjax.infra.runtime import tune_host_allocator
from capsjax.nn.model import count_params
from capsjax.train import presets
from capsjax.train.loop import train
from capsjax.train.model_state import create_state
from readme_block import replace_block

README = Path(__file__).resolve().parent.parent / "docs" / "results.md"  # the results page
START, END = "<!-- routing-accuracy:start -->", "<!-- routing-accuracy:end -->"


def run_rule(rule: str, args) -> dict:
  """Trains the preset with `rule`; returns its row (accuracy, wall time, params)."""
  config = dataclasses.replace(presets.get(args.config), routing=rule)
  if args.max_steps:
    config = dataclasses.replace(config, max_steps=args.max_steps)
  workdir = args.out / "runs" / rule
  result = train(config, workdir, args.data_dir, train_limit=args.train_examples,
                 test_limit=args.test_examples,
                 progress=not args.no_progress)
  settings = json.loads((workdir / "config.json").read_text())["model"]
  return {"rule": rule, "test_accuracy": result["test_accuracy"],
          "test_examples": result["test_examples"], "steps": result["step"],
          "train_seconds": result["train_seconds"], "params": _params(settings, config)}


def _params(settings: dict, config) -> int:
  from flax import nnx

  graphdef, state = create_state(settings, config)
  model, _ = nnx.merge(graphdef, state)
  return count_params(model)


def table(rows: list[dict], config_name: str) -> str:
  """Markdown table of the rows, best accuracy first."""
  lines = ["| routing rule | test accuracy | train wall time | parameters |",
           "|---|---|---|---|"]
  for r in sorted(rows, key=lambda r: -r["test_accuracy"]):
    minutes, seconds = divmod(round(r["train_seconds"]), 60)
    lines.append(f"| `{r['rule']}` | {r['test_accuracy']:.2%} ({r['test_examples']:,} images) "
                 f"| {minutes} min {seconds:02d} s ({r['steps']:,} steps) | {r['params']:,} |")
  return "\n".join(lines) + (f"\n\n`{config_name}` preset, seed 0, JAX {jax.__version__} on "
                             f"{jax.default_backend()} ({platform.processor() or platform.machine()})"
                             ", wall time includes data loading, compilation and the final eval.")


def update_readme(text: str, readme_path: Path = README) -> None:
  """Replaces the text between the routing-accuracy markers of `readme_path` with `text`."""
  replace_block(readme_path, START, END, text, "routing_accuracy")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR)")
  p.add_argument("--rules", default=",".join(routing.available()),
                 help="comma-separated rule names (default: all registered)")
  p.add_argument("--config", default="quick")
  p.add_argument("--max-steps", type=int, default=None, help="override the preset's run length")
  p.add_argument("--train-examples", type=int, default=None, help="default: the full train split")
  p.add_argument("--test-examples", type=int, default=None, help="default: the full test split")
  p.add_argument("--out", type=Path, default=Path("runs/routing_accuracy"))
  p.add_argument("--force", action="store_true", help="re-run rules that already have a result")
  p.add_argument("--update-readme", nargs="?", const=README, type=Path, default=None,
                 metavar="README", help="write the table into docs/results.md (or the file given)")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  tune_host_allocator()
  rules = [r for r in args.rules.split(",") if r]
  for r in rules:
    routing.info(r)  # unknown names fail before any training
  args.out.mkdir(parents=True, exist_ok=True)
  results_path = args.out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  for rule in rules:
    if rule in results and not args.force:
      print(f"{rule}: already measured ({results[rule]['test_accuracy']:.2%}); skipping")
      continue
    print(f"=== {rule} ===", flush=True)
    results[rule] = run_rule(rule, args)
    results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results[rule]), flush=True)
  text = table([results[r] for r in rules if r in results], args.config)
  (args.out / "table.md").write_text(text + "\n")
  print(text)
  if args.update_readme:
    update_readme(text, args.update_readme)
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except ValueError as e:
    sys.exit(f"routing_accuracy: error: {e}")
