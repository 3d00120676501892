"""The benchmark scripts run through on tiny settings (their timings are not checked here)."""

import json
import os
import subprocess
import sys

from capsjax.data import multimnist
from conftest import REPO

TINY_MODEL = json.dumps(dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
                             decoder_hidden=[32, 64]))


def test_epoch_time_runs_a_multimnist_preset(tmp_path, cli_env):
  # It crashed after training on a set other than MNIST / Fashion-MNIST: it re-read the training
  # split with `data.load_split`, which knows only those two, and took an epoch to be the stored
  # split, not the set built on it (MultiMNIST: 1,000 pairs per stored digit).
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "epoch_time.py"), "--config", "multimnist_cpu",
       "--batch-size", "4", "--max-steps", "4", "--log-every", "2", "--train-examples", "16",
       "--test-examples", "8", "--model", TINY_MODEL, "--workdir", str(tmp_path / "run")],
      capture_output=True, text=True, env={**os.environ, **cli_env}, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["dataset"] == "multimnist" and result["pipeline"] == "device"
  assert result["training_set_size"] == multimnist.num_examples(16)
  assert result["steps_per_epoch"] == multimnist.num_examples(16) // 4
  assert (result["total_steps"], result["steps_timed"], result["test_examples"]) == (4, 2, 8)
  assert result["seconds_per_epoch"] > 0 and 0 <= result["test_accuracy"] <= 1
