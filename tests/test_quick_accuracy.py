"""The `quick` preset's acceptance bar on the real MNIST (slow: ~12 minutes on 2 CPU cores)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_preset_reaches_99_percent(tmp_path, data_dir):
  workdir = tmp_path / "quick"
  proc = subprocess.run([sys.executable, "-m", "capsjax.cli", "train", "--config", "quick",
                         "--data-dir", data_dir, "--workdir", str(workdir), "--no-progress"],
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["test_examples"] == 10000
  assert result["test_accuracy"] >= 0.99, result
