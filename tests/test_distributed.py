"""Multi-process training (capsjax/infra/distributed.py) with two `capsjax train` processes on localhost,
the CPU backend and its gloo collectives: the same parameters as one process with the same global
batch, Orbax saving and restoring across the processes, only process 0 reporting; bad input;
checks decided once by process 0 (`distributed.decide`), so that a failed one ends every process
with the same error line."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from capsjax.train.model_state import load_for_eval
from capsjax.infra.workdir import WorkdirLock
from conftest import FAULTY_CLI, TINY_MODEL_ARGS

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


def _start_processes(args: list[list[str]], env: dict, timeout_s: float = 60
                     ) -> list[subprocess.Popen]:
  """Starts `args[i]` as process i of one run (own coordinator port); text pipes."""
  address = f"localhost:{_free_port()}"
  return [subprocess.Popen(
      [*a, "--coordinator-address", address, "--num-processes", str(len(args)), "--process-id",
       str(i), "--coordinator-timeout", str(timeout_s)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, **ONE_DEVICE, **env}) for i, a in enumerate(args)]


def _finish(procs: list[subprocess.Popen], timeout_s: float
            ) -> list[subprocess.CompletedProcess]:
  """Waits up to `timeout_s` in all for every process; kills them all and fails if one hangs."""
  deadline = time.monotonic() + timeout_s
  results = []
  try:
    for i, proc in enumerate(procs):
      try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pytest.fail(f"process {i} of {len(procs)} still running after {timeout_s:g} s (hangs)")
      results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return results


def _run_processes(args: list[str], num: int, env: dict, timeout_s: float = 60,
                   ) -> list[subprocess.CompletedProcess]:
  """Runs `args` as processes 0..num-1 of one run (their own coordinator port); waits for all."""
  return _finish(_start_processes([args] * num, env, timeout_s), 600)


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


# --- decisions made once, on process 0 ----------------------------------------------------------
# A check whose answer may differ between processes (the workdir lock, the workdir still being
# there, free space, which checkpoint is good) is made by process 0 and its outcome broadcast:
# all processes take the same branch, and a failed check ends every one of them with the same
# error line, not one with the error and the others waiting in a collective for ever.


def _wait_for_line(proc: subprocess.Popen, marker: str) -> None:
  """Reads `proc`'s stderr up to a line containing `marker` (fails if it ends first)."""
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if marker in line:
      return
  pytest.fail(f"process ended (rc {proc.wait()}) before printing {marker!r}: {''.join(lines)}")


def _error_lines(runs: list[subprocess.CompletedProcess], status: int) -> str:
  """The one `capsjax: error:` line that every run ended with (the same on all), after checking
  each exit status is `status` and no traceback was printed."""
  found = []
  for i, run in enumerate(runs):
    assert run.returncode == status, f"process {i}: rc {run.returncode}: {run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, f"process {i}: {run.stderr[-3000:]}"
    lines = [x for x in run.stderr.strip().splitlines() if x.startswith("capsjax: error: ")]
    assert len(lines) == 1, f"process {i}: {run.stderr[-3000:]}"
    found.append(lines[0])
  assert len(set(found)) == 1, found
  return found[0].removeprefix("capsjax: error: ")


def test_a_workdir_removed_before_a_save_ends_every_process(tmp_path, data_dir, cli_env):
  """Only process 0 holds the workdir lock and sees that the workdir is gone. Both end with its
  line and status 74. (Before the checks were decided once, process 1 made its own and ended
  with another line: "could not save checkpoint 3 in '.../w/checkpoints': no such file or
  directory; ...".)"""
  workdir, go_on = tmp_path / "w", tmp_path / "go_on"
  args = [*FAULTY_CLI, *_train_args(workdir, data_dir, 6)[3:]]  # the CLI with the test's faults
  procs = _start_processes([args, args], {
      **cli_env, "CAPSJAX_FAULT_PAUSE_AFTER_STEP": "3", "CAPSJAX_FAULT_CONTINUE_FILE": str(go_on)})
  try:
    for proc in procs:
      _wait_for_line(proc, "paused after step 3")
  except BaseException:
    for proc in procs:
      proc.kill()
    raise
  shutil.rmtree(workdir)
  go_on.touch()
  line = _error_lines(_finish(procs, 60), 74)
  assert line == (f"could not save checkpoint 3: workdir {str(workdir)!r} is gone (removed, "
                  "moved or unmounted during the run); nothing more can be saved there; "
                  f"{workdir / 'checkpoints'} is not reachable any more")
  assert not workdir.exists()


def test_a_busy_workdir_ends_every_process(tmp_path, data_dir, cli_env):
  """Process 0 cannot take the workdir lock (another run holds it): both processes end with its
  error line. (Before, process 1 waited for process 0 at a barrier until gloo gave up after 30 s
  with a traceback.)"""
  workdir = tmp_path / "w"
  workdir.mkdir()
  args = _train_args(workdir, data_dir, 3)
  with WorkdirLock(workdir):
    line = _error_lines(_finish(_start_processes([args, args], cli_env), 60), 2)
  assert line.startswith(f"workdir {str(workdir.absolute())!r} is in use by process {os.getpid()}")


def test_only_process_0_decides_which_checkpoint_is_good(tmp_path, data_dir, cli_env):
  """Process 0 sees checkpoint 6 damaged, process 1 (its own copy of the workdir: a file system
  whose view lags) sees it whole. Process 0's choice holds for both: both restore 3, and the
  copy of process 1 is not touched. (Before, process 0 moved 6 aside and waited at a barrier
  while process 1 restored 6 and went on: still running after 90 s.)"""
  one = subprocess.run(_train_args(tmp_path / "a", data_dir, 6), capture_output=True, text=True,
                       env={**os.environ, **ONE_DEVICE, **cli_env}, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "a" / "checkpoints" / "6" / "state")
  runs = _finish(_start_processes([_train_args(tmp_path / d, data_dir, 3) for d in "ab"],
                                  cli_env), 90)
  for i, run in enumerate(runs):
    assert run.returncode == 0, f"process {i}: {run.stderr[-3000:]}"
  out = runs[0].stdout
  assert "Warning: checkpoint 6 in " in out and "Moved it to " in out, out
  assert "Resuming from checkpoint at step 3 in " in out, out
  assert json.loads(out.strip().splitlines()[-1])["step"] == 3
  assert [p.name[0] for p in (tmp_path / "a" / "corrupt_checkpoints").iterdir()] == ["6"]
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["3", "6"]


_DECIDE_SCRIPT = """
import json, sys
from capsjax.infra import distributed
from capsjax.core.errors import one_line
from capsjax.infra.workdir import StorageError
flags = dict(zip(sys.argv[1::2], sys.argv[2::2]))  # the flags _start_processes adds
distributed.initialize(flags["--coordinator-address"], 2, int(flags["--process-id"]),
                       timeout_s=60)

class TwoArgs(Exception):
  def __init__(self, a, b):
    super().__init__(f"{a} {b}")

ran = []
def run(outcome):
  ran.append(outcome)
  if isinstance(outcome, BaseException):
    raise outcome
  return outcome

results = []
for outcome in [None, (3, ["a", "b"]), {"text": "é" * 700}, StorageError("full\\ndisk"),
                ValueError("x" * 3000), TwoArgs("not", "rebuildable")]:
  try:
    results.append(["value", distributed.decide(lambda: run(outcome))])
  except Exception as e:
    results.append([type(e).__name__, one_line(e)])
print(json.dumps({"results": results, "ran": len(ran)}))
"""


def test_decide_gives_every_process_the_outcome_of_process_0():
  """`distributed.decide` on two processes: values (a tuple comes back as a list, text longer
  than one broadcast piece), errors of the same class and one-line message, and a class that
  cannot be rebuilt from a message; the function runs on process 0 alone."""
  runs = _finish(_start_processes([[sys.executable, "-c", _DECIDE_SCRIPT]] * 2, {}), 60)
  for i, run in enumerate(runs):
    assert run.returncode == 0, f"process {i}: {run.stderr[-3000:]}"
  out = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
  assert [o["ran"] for o in out] == [6, 0]
  expected = [["value", None], ["value", [3, ["a", "b"]]], ["value", {"text": "é" * 700}],
              ["StorageError", "full disk"], ["ValueError", "x" * 3000]]
  for o in out:
    assert o["results"][:5] == expected
  assert out[0]["results"][5] == ["TwoArgs", "not rebuildable"]
  assert out[1]["results"][5] == ["RuntimeError", "process 0 failed: not rebuildable"]
