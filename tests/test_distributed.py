"""Multi-process training (capsjax/distributed.py) with two `capsjax train` processes on localhost,
the CPU backend and its gloo collectives: the same parameters as one process with the same global
batch, Orbax saving and restoring across the processes, only process 0 reporting; bad input."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from capsjax.train import load_for_eval
from conftest import TINY_MODEL_ARGS

ONE_DEVICE = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}  # each process: one CPU device


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train_args(workdir, data_dir, max_steps: int, batch: int = 16) -> list[str]:
  return [sys.executable, "-m", "capsjax.cli", "train", "--workdir", str(workdir),
          "--data-dir", data_dir, "--batch-size", str(batch), "--max-steps", str(max_steps),
          "--log-every", "3", "--checkpoint-every", "3", "--train-examples", "256",
          "--test-examples", "64", "--no-progress", *TINY_MODEL_ARGS]


def _run_processes(args: list[str], num: int, env: dict, timeout_s: float = 60,
                   ) -> list[subprocess.CompletedProcess]:
  """Runs `args` as processes 0..num-1 of one run (their own coordinator port); waits for all."""
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      [*args, "--coordinator-address", address, "--num-processes", str(num), "--process-id",
       str(i), "--coordinator-timeout", str(timeout_s)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, **ONE_DEVICE, **env}) for i in range(num)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  return results


def _params(workdir, step: int) -> list[np.ndarray]:
  _, state, _ = load_for_eval(workdir, step, report=lambda _: None)
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
  assert len(a) == len(b)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_two_processes_train_like_one(tmp_path, data_dir, cli_env):
  """One process to step 9; two processes to step 6, then resumed by two processes to step 9
  (restoring the checkpoint they wrote together). Measured 2026-11-28: parameters at steps 6 and
  9 differ from the one-process run's by at most 4.2e-8 (float32 rounding of the all-reduce)."""
  one = subprocess.run(_train_args(tmp_path / "one", data_dir, 9), capture_output=True, text=True,
                       env={**os.environ, **ONE_DEVICE, **cli_env}, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  two = tmp_path / "two"
  for max_steps in (6, 9):
    runs = _run_processes(_train_args(two, data_dir, max_steps), 2, cli_env)
    for i, run in enumerate(runs):
      assert run.returncode == 0, f"process {i}: {run.stderr[-3000:]}"
    final = json.loads(runs[0].stdout.strip().splitlines()[-1])  # process 0 reports ...
    assert final["step"] == max_steps
    # ... and process 1 prints nothing (gloo's own connection line aside)
    assert [x for x in runs[1].stdout.splitlines() if not x.startswith("[Gloo]")] == []
  assert "Resuming from checkpoint at step 6" in runs[0].stdout

  for step in (6, 9):
    diff = _max_diff(_params(tmp_path / "one", step), _params(two, step))
    print(f"step {step}: max |two processes - one process| = {diff:.3g}")
    assert diff < 1e-5, (step, diff)
  # metrics.jsonl written once (by process 0), with the one-process run's numbers.
  lines = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
  reference = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text()
               .splitlines()]
  train_steps = lambda rs: [r["step"] for r in rs if r["split"] == "train"]
  assert train_steps(lines) == train_steps(reference) == [3, 6, 9]
  assert lines[-1]["split"] == "test"
  assert lines[-1]["test_loss"] == pytest.approx(reference[-1]["test_loss"], rel=1e-4)


def _one_error_line(run: subprocess.CompletedProcess, message: str) -> None:
  lines = run.stderr.strip().splitlines()
  assert run.returncode == 2, run.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("capsjax: error: "), run.stderr[-3000:]
  assert message in lines[0], lines[0]


def test_a_batch_not_divisible_by_the_processes_is_one_error_line(tmp_path, data_dir, cli_env):
  workdir = tmp_path / "w"
  for run in _run_processes(_train_args(workdir, data_dir, 2, batch=15), 2, cli_env):
    _one_error_line(run, "global batch size 15 does not split over 2 processes")
  assert not workdir.exists()


def test_a_coordinator_that_never_answers_is_one_error_line(tmp_path, data_dir):
  workdir = tmp_path / "w"
  port = _free_port()  # nobody listens there
  run = subprocess.run(
      [*_train_args(workdir, data_dir, 2), "--coordinator-address", f"localhost:{port}",
       "--num-processes", "2", "--process-id", "1", "--coordinator-timeout", "2"],
      capture_output=True, text=True, env={**os.environ, **ONE_DEVICE}, timeout=120)
  _one_error_line(run, f"process 1 of 2: no coordinator answered at localhost:{port} within 2 s")
  assert not workdir.exists()


@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "2"], "--coordinator-address, --process-id missing"),
    (["--coordinator-address", "localhost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator-address must be HOST:PORT"),
    (["--coordinator-address", "localhost:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in 0..1 for 2 processes, got 2"),
    (["--coordinator-address", "localhost:1", "--num-processes", "2", "--process-id", "1",
      "--coordinator-timeout", "0"], "--coordinator-timeout must be positive, got 0")])
def test_bad_process_flags_are_one_error_line(tmp_path, data_dir, flags, message):
  workdir = tmp_path / "w"
  run = subprocess.run([*_train_args(workdir, data_dir, 2), *flags], capture_output=True,
                       text=True, env={**os.environ, **ONE_DEVICE}, timeout=120)
  _one_error_line(run, message)
  assert not workdir.exists()
