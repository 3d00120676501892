"""The paper's Table 1 (MNIST test error): baseline CNN, CapsNet with 1 and 3 routing iterations,
each with and without the reconstruction loss, plus the `official` variant's r=3 row.

    python experiments/table1.py --preset table1_cpu --seeds 1 \
        --data-dir ../shared/tensorflow_datasets --update-readme
    python experiments/table1.py --preset paper --seeds 3 ...        # the GPU reproduction

Every (row, seed) trains in its own workdir, OUT/PRESET/ROW/seedN, through `capsjax.train` (the
same loop, data, augmentation, optimizer and checkpoints as `capsjax train`). A run with a
result is skipped; an interrupted one resumes from its checkpoint when the script is run again
(its wall time adds up over the attempts). Each workdir records the preset and the exact config
it was started with (table1_run.json) and a run whose config differs from the one asked for now is
refused, so one row never mixes presets or settings. OUT/PRESET/results.json holds every run,
OUT/PRESET/table.md the table: test error mean ± sd over seeds beside the paper's value,
parameters, steps, wall time and hardware; `--update-readme` writes it between the results page's
(docs/results.md) `<!-- table1:start -->` and `<!-- table1:end -->` markers.
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax

from capsjax import data
from capsjax.core.errors import one_line
from capsjax.infra.interrupt import TrainingInterrupted
from capsjax.infra.runtime import tune_host_allocator
from capsjax.nn.model import count_params
from capsjax.train import presets
from capsjax.train.config import TrainConfig
from capsjax.train.loop import train
from capsjax.train.model_state import create_model
from readme_block import replace_block

README = Path(__file__).resolve().parent.parent / "docs" / "results.md"  # the results page
START, END = "<!-- table1:start -->", "<!-- table1:end -->"

# name: (label, TrainConfig changes, the paper's test error in % (Table 1), its sd or None)
ROWS: dict[str, tuple[str, dict[str, Any], float, float | None]] = {
    "baseline": ("Baseline CNN", {"arch": "baseline"}, 0.39, None),
    "r1": ("CapsNet, routing 1, no reconstruction",
           {"routing_iters": 1, "recon_weight": 0.0}, 0.34, 0.032),
    "r1_recon": ("CapsNet, routing 1, reconstruction", {"routing_iters": 1}, 0.29, 0.011),
    "r3": ("CapsNet, routing 3, no reconstruction",
           {"routing_iters": 3, "recon_weight": 0.0}, 0.35, 0.036),
    "r3_recon": ("CapsNet, routing 3, reconstruction", {"routing_iters": 3}, 0.25, 0.005),
    "r3_recon_official": ("CapsNet, routing 3, reconstruction, `official` variant",
                          {"routing_iters": 3, "model": {"variant": "official"}}, 0.25, 0.005),
}


def row_config(preset: TrainConfig, row: str, seed: int, overrides: dict[str, Any]) -> TrainConfig:
  """The preset with the row's changes, `overrides` (e.g. max_steps for a smoke run) and `seed`."""
  changes = {**ROWS[row][1], **overrides, "seed": seed}
  if "model" in ROWS[row][1] or "model" in overrides:
    changes["model"] = {**preset.model, **overrides.get("model", {}), **ROWS[row][1].get("model",
                                                                                           {})}
  return dataclasses.replace(preset, **changes).validate()


def config_record(config: TrainConfig) -> dict[str, Any]:
  """The config as it reads back from JSON (tuples become lists), for comparisons."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def trained_parameters(config: TrainConfig, settings: dict[str, Any]) -> int:
  """Parameters that the loss trains: without the reconstruction loss the decoder is unused
  (the paper: 8.2M with it, 6.8M without)."""
  model = create_model(settings, config)
  total = count_params(model)
  decoder = getattr(model, "decoder", None)
  return total - count_params(decoder) if decoder is not None and not config.recon_weight else total


def run_one(preset_name: str, row: str, seed: int, config: TrainConfig, workdir: Path,
            data_dir, limits: dict[str, int | None], progress: bool) -> dict[str, Any]:
  """Trains (or resumes) one (row, seed); returns its result record."""
  marker = workdir / "table1_run.json"
  wanted = {"preset": preset_name, "row": row, "seed": seed, "config": config_record(config)}
  seconds_before = 0.0
  if marker.exists():
    saved = json.loads(marker.read_text())
    if {k: saved.get(k) for k in wanted} != wanted:
      raise ValueError(f"{workdir} holds a run of another preset or config (preset "
                       f"{saved.get('preset')!r}); delete it or use another --out.")
    seconds_before = float(saved.get("seconds", 0.0))
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.time()

  def record_time() -> None:
    marker.write_text(json.dumps({**wanted, "seconds": seconds_before + time.time() - start}))

  record_time()
  try:
    result = train(config, workdir, data_dir, train_limit=limits["train"],
                   test_limit=limits["test"], progress=progress)
  except TrainingInterrupted:
    record_time()
    raise
  record_time()
  settings = json.loads((workdir / "config.json").read_text())["model"]  # what train recorded
  return {**wanted, "test_error": 100 * (1 - result["test_accuracy"]),
          "test_examples": result["test_examples"], "steps": result["step"],
          "seconds": json.loads(marker.read_text())["seconds"],
          "params": trained_parameters(config, settings)}


def hardware() -> str:
  """What the run trained on: "2 CPU cores (AMD EPYC)", "1x NVIDIA H100 80GB HBM3 (gpu)"."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{os.cpu_count()} CPU cores ({_cpu_model()})"
  return f"{jax.device_count()}x {device.device_kind} ({device.platform})"


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.partition(":")[2].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def table(results: list[dict], preset_name: str, rows: list[str]) -> str:
  """Markdown: one line per row, mean ± sd of the test error over its seeds."""
  lines = ["| model | test error (ours) | seeds | paper | parameters | steps | wall time per run |",
           "|---|---|---|---|---|---|---|"]
  for row in rows:
    runs = [r for r in results if r["row"] == row]
    if not runs:
      continue
    errors = [r["test_error"] for r in runs]
    ours = f"{statistics.mean(errors):.2f}%"
    if len(errors) > 1:
      ours += f" ± {statistics.stdev(errors):.2f}"
    label, _, paper, paper_sd = ROWS[row]
    paper_text = f"{paper:.2f}%" + (f" ± {paper_sd:.3f}" if paper_sd else "")
    minutes = statistics.mean(r["seconds"] for r in runs) / 60
    lines.append(f"| {label} | {ours} | {len(runs)} | {paper_text} | {runs[0]['params']:,} | "
                 f"{runs[0]['steps']:,} | {minutes:.1f} min |")
  hw = results[0].get("hardware", "?") if results else "?"
  dates = sorted({r["date"] for r in results if "date" in r})
  when = f", {' to '.join(dict.fromkeys((dates[0], dates[-1])))}" if dates else ""
  return "\n".join(lines) + (
      f"\n\n`{preset_name}` preset on {hw}{when}, JAX {jax.__version__}; test error on "
      f"{results[0]['test_examples']:,} MNIST test images; wall time includes data loading, "
      "compilation and the final evaluation. Paper: Sabour et al. 2017, Table 1 (its "
      "baseline's sd is not given; the paper's runs are far longer than a CPU preset's)."
      if results else "")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="quick",
                 help=f"one of {', '.join(presets.available())}")
  p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per row")
  p.add_argument("--rows", default=",".join(ROWS), help=f"some of {', '.join(ROWS)}")
  p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR)")
  p.add_argument("--out", type=Path, default=Path("runs/table1"))
  p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                 help="TrainConfig change for every row (repeatable), e.g. max_steps=200")
  p.add_argument("--train-examples", type=int, default=None, help="default: the full split")
  p.add_argument("--test-examples", type=int, default=None, help="default: the full split")
  p.add_argument("--update-readme", nargs="?", const=README, type=Path, default=None,
                 metavar="README", help="write the table into docs/results.md (or the file given)")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  tune_host_allocator()
  preset = presets.get(args.preset)
  rows = [r for r in args.rows.split(",") if r]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise ValueError(f"unknown row {unknown[0]!r}; expected some of {', '.join(ROWS)}.")
  if args.seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {args.seeds}.")
  overrides = {}
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set expects FIELD=JSON (e.g. max_steps=200), got {item!r}.")
    overrides[key] = json.loads(value)
  data.resolve_data_dir(args.data_dir)
  configs = {(row, seed): row_config(preset, row, seed, overrides)  # bad settings fail first
             for row in rows for seed in range(args.seeds)}
  out = args.out / args.preset
  out.mkdir(parents=True, exist_ok=True)
  results_path = out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else []
  limits = {"train": args.train_examples, "test": args.test_examples}
  for (row, seed), config in configs.items():
    done = [r for r in results if r["row"] == row and r["seed"] == seed]
    if done and done[0]["config"] != config_record(config):
      raise ValueError(f"{results_path} has {row} seed {seed} measured with another config; "
                       "use another --out for different settings.")
    if done:
      print(f"{row} seed {seed}: done ({done[0]['test_error']:.2f}% error); skipping")
      continue
    print(f"=== {row} seed {seed} ({args.preset}) ===", flush=True)
    record = run_one(args.preset, row, seed, config, out / row / f"seed{seed}", args.data_dir,
                     limits, not args.no_progress)
    record["hardware"] = hardware()
    record["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    results.append(record)
    results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(record), flush=True)
  text = table(results, args.preset, rows)
  (out / "table.md").write_text(text + "\n")
  print(text)
  if args.update_readme:
    replace_block(args.update_readme, START, END, text, "table1")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except ValueError as e:
    sys.exit(f"table1: error: {one_line(e)}")
  except TrainingInterrupted as e:
    sys.exit(f"table1: {e}; run the same command again to continue.")
