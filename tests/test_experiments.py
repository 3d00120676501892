"""The research-fork example, the routing-cost benchmark and the per-rule accuracy script."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from PIL import Image

from capsjax import routing
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "experiments"))

import routing_accuracy  # noqa: E402
import routing_cost  # noqa: E402
import table1  # noqa: E402

TINY = ["--max-steps", "3", "--batch-size", "8", "--train-examples", "256",
        "--test-examples", "32", "--checkpoint-every", "3", "--no-progress"]


def test_custom_rule_defined_outside_the_package_trains_via_the_cli(tmp_path, data_dir):
  workdir = tmp_path / "custom"
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "custom_routing.py"), "--data-dir", data_dir,
       "--workdir", str(workdir), *TINY], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_record, test_record = records
  assert train_record["split"] == "train" and train_record["step"] == 3
  assert all(math.isfinite(v) for v in train_record.values() if isinstance(v, float))
  # The printed result is the final evaluation of 32 images: k/32 correct, finite losses.
  assert result == {**test_record, "train_seconds": result["train_seconds"]}
  assert result["step"] == 3 and result["test_examples"] == 32
  assert (result["test_accuracy"] * 32).is_integer()
  assert math.isfinite(result["test_loss"]) and result["test_loss"] > 0
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["model"]["routing"] == "tempered" and stored["model"]["routing_options"] == {}
  assert stored["config"]["routing"] == "tempered" and stored["config"]["max_steps"] == 3
  assert stored["config"]["plugins"] == ["custom_routing"]  # what eval and resume will import
  assert "tempered" not in routing.available()  # registered only in the script's process
  listed = subprocess.run(
      [sys.executable, "-m", "capsjax.cli", "rules", "--json", "--plugin", "custom_routing"],
      capture_output=True, text=True, timeout=600,
      env={**os.environ, "PYTHONPATH": str(REPO / "experiments")})
  assert listed.returncode == 0, listed.stderr
  tempered = json.loads(listed.stdout)["rules"]["tempered"]
  assert tempered["options"] == {"temperature": 0.5} and tempered["source"] == (
      "module custom_routing")


def test_routing_cost_writes_csv_json_and_plots(tmp_path, capsys):
  out = tmp_path / "cost"
  rules = "dynamic,em,uniform,dynamic_chunked+votes"
  assert routing_cost.main(["--rules", rules, "--iters", "1,2", "--n-in", "16,24,32",
                            "--batch", "2", "--repeats", "1", "--memory-batch", "2",
                            "--chunk-size", "8", "--out", str(out)]) == 0
  with open(out / "routing_cost.csv") as f:
    rows = list(csv.DictReader(f))
  # dynamic, em, dynamic_chunked+votes: 2 iteration counts at N_in 24 + N_in 16 and 32 at 2
  # iterations (the middle one); uniform is one-pass: once per N_in. Two passes each.
  assert len(rows) == 2 * (3 * 4 + 3)
  assert {r["pass"] for r in rows} == {"forward", "forward+backward"}
  for r in rows:
    assert float(r["median_ms"]) > 0 and int(r["peak_bytes"]) > 0
    # cost_analysis counts a loop body once: no FLOPs for the chunked (lax.scan) variant
    assert (r["flops"] == "") if r["rule"] == "dynamic_chunked+votes" else float(r["flops"]) > 0
  fwd = {(r["rule"], r["n_in"]): float(r["flops"]) for r in rows
         if r["pass"] == "forward" and r["iters"] == "2" and r["rule"] == "dynamic"}
  assert fwd[("dynamic", "32")] > fwd[("dynamic", "16")]  # cost grows with N_in
  saved = json.loads((out / "routing_cost.json").read_text())
  assert len(saved["rows"]) == len(rows) and saved["memory"]["reduction/forward"] > 1
  for name in ("routing_cost_vs_iters.png", "routing_cost_vs_n_in.png"):
    with Image.open(out / name) as image:
      assert image.format == "PNG" and image.size == (1320, 495)  # 12 x 4.5 in at 110 dpi
      assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["batch"] == 2


def test_routing_cost_bad_input():
  with pytest.raises(ValueError, match="unknown routing rule 'nope'"):
    routing_cost.main(["--rules", "nope"])
  with pytest.raises(ValueError, match="--n-in expects positive integers"):
    routing_cost.main(["--n-in", "0"])


def test_routing_accuracy_trains_each_rule_and_fills_the_readme_table(tmp_path, data_dir):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{routing_accuracy.START}\nold\n{routing_accuracy.END}\noutro\n")
  out = tmp_path / "acc"
  args = ["--data-dir", data_dir, "--rules", "uniform,self_attention", "--max-steps", "2",
          "--train-examples", "128", "--test-examples", "32", "--out", str(out),
          "--no-progress", "--update-readme", str(readme)]
  assert routing_accuracy.main(args) == 0
  results = json.loads((out / "results.json").read_text())
  assert set(results) == {"uniform", "self_attention"}
  assert results["self_attention"]["params"] > results["uniform"]["params"]  # its log prior
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
  assert "| `uniform` |" in text and "| `self_attention` |" in text


def test_table1_runs_rows_skips_finished_ones_and_refuses_mixed_settings(tmp_path, data_dir,
                                                                          capsys):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{table1.START}\nold\n{table1.END}\noutro\n")
  tiny = json.dumps({"conv_channels": 16, "primary_channels": 4, "primary_dim": 4,
                     "digit_dim": 6, "decoder_hidden": [32, 64]})
  args = ["--data-dir", data_dir, "--rows", "r1,r3_recon_official", "--seeds", "2",
          "--set", "max_steps=2", "--set", "batch_size=8", "--set", f"model={tiny}",
          "--train-examples", "64", "--test-examples", "16", "--out", str(tmp_path / "t1"),
          "--no-progress", "--update-readme", str(readme)]
  assert table1.main(args) == 0
  results = json.loads((tmp_path / "t1" / "quick" / "results.json").read_text())
  assert sorted((r["row"], r["seed"]) for r in results) == [
      ("r1", 0), ("r1", 1), ("r3_recon_official", 0), ("r3_recon_official", 1)]
  r1 = [r for r in results if r["row"] == "r1"]
  official = [r for r in results if r["row"] == "r3_recon_official"]
  assert r1[0]["config"]["recon_weight"] == 0.0 and r1[0]["config"]["routing_iters"] == 1
  assert official[0]["config"]["model"]["variant"] == "official"
  assert official[0]["config"]["model"]["digit_dim"] == 6  # --set model merged with the row's
  # Without the reconstruction loss the decoder's parameters are not counted (paper: 6.8M).
  assert r1[0]["params"] < official[0]["params"]
  assert {r["seed"] for r in r1} == {0, 1} and all(r["steps"] == 2 for r in results)
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
  assert "| CapsNet, routing 1, no reconstruction |" in text and "0.34% ± 0.032" in text
  capsys.readouterr()
  assert table1.main(args) == 0  # everything measured: nothing is trained again
  assert capsys.readouterr().out.count("skipping") == 4
  with pytest.raises(ValueError, match="measured with another config"):
    table1.main([*args[:args.index("max_steps=2")], "max_steps=3",
                 *args[args.index("max_steps=2") + 1:]])
