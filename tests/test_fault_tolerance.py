"""Faults during training, through the real `capsjax` command on the shipped MNIST.

Every run trains the tiny CapsNet (TINY_MODEL_ARGS) for 6 steps of batch 8 on the first 32
training images: 4 steps per epoch, so step 4 is an epoch boundary and steps 3 and 5 are
mid-epoch. Each faulty run is resumed and its final checkpoint compared array by array, bit for
bit, with one uninterrupted run of the same seed.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from capsjax.infra.checkpoint import Checkpointer
from capsjax.train.model_state import load_for_eval
from conftest import FAULTY_CLI, TINY_MODEL_ARGS, run_cli

STEPS = 6
RUN = ["--batch-size", "8", "--train-examples", "32", "--test-examples", "16", "--no-progress",
       "--checkpoint-every", "2", *TINY_MODEL_ARGS]


def _train_args(workdir: Path, max_steps: int = STEPS) -> list[str]:
  return ["train", "--config", "quick", "--workdir", str(workdir), "--max-steps", str(max_steps),
          *RUN]


def _arrays(workdir: Path, step: int | None = None) -> dict:
  """The checkpoint's (model, optimizer) state as numpy arrays, plus its metadata step."""
  _, state, meta = load_for_eval(workdir, step, with_optimizer=True)
  return {"step": meta["step"], "state": jax.tree.map(np.asarray, nnx.to_pure_dict(state))}


def _assert_bit_identical(a: dict, b: dict) -> None:
  assert a["step"] == b["step"]
  paths_a, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(a["state"]))
  leaves_b = jax.tree.leaves(b["state"])
  assert len(leaves_a) == len(leaves_b) > 10
  for path, x, y in zip(paths_a, leaves_a, leaves_b):
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cli_env):
  """Final (step 6) and step-4 checkpoints of an uninterrupted run."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = run_cli(*_train_args(workdir), env=cli_env)
  assert proc.returncode == 0, proc.stderr
  return {"final": _arrays(workdir), "step4": _arrays(workdir, 4)}


def _resume(workdir: Path, cli_env, expect_from: int, args=None, command=None
            ) -> subprocess.CompletedProcess:
  """Runs `capsjax ARGS` (default: the 6-step run) to completion, or `command` exactly."""
  if command is None:
    proc = run_cli(*(args or _train_args(workdir)), env=cli_env)
  else:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **cli_env})
  assert proc.returncode == 0, proc.stderr
  assert f"Resuming from checkpoint at step {expect_from}" in proc.stdout
  return proc


@pytest.mark.parametrize("stop_at", [3, 4, 5])  # mid-epoch 0, epoch boundary, mid-epoch 1
def test_resume_after_stop_is_bit_exact(stop_at, tmp_path, cli_env, reference):
  workdir = tmp_path / "run"
  first = run_cli(*_train_args(workdir, stop_at), env=cli_env)
  assert first.returncode == 0, first.stderr
  _resume(workdir, cli_env, expect_from=stop_at)
  _assert_bit_identical(_arrays(workdir), reference["final"])


def test_resume_keeps_the_runs_seed(tmp_path, cli_env, reference):
  workdir = tmp_path / "run"
  first = run_cli(*_train_args(workdir, 3), env=cli_env)
  assert first.returncode == 0, first.stderr
  resumed = _resume(workdir, cli_env, expect_from=3, args=[*_train_args(workdir), "--seed", "5"])
  assert "Keeping the run's seed 0 (ignoring seed 5)." in resumed.stdout
  assert json.loads((workdir / "config.json").read_text())["config"]["seed"] == 0
  _assert_bit_identical(_arrays(workdir), reference["final"])  # seed 0's data order and keys


def _start(workdir: Path, cli_env, **faults) -> subprocess.Popen:
  env = {**os.environ, **cli_env, **{f"CAPSJAX_FAULT_{k.upper()}": str(v) for k, v in
                                     faults.items()}}
  return subprocess.Popen([*FAULTY_CLI, *_train_args(workdir)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, marker: str) -> None:
  """Reads the child's stderr until a line containing `marker` (fails if it exits first)."""
  for line in proc.stderr:
    if marker in line:
      return
  pytest.fail(f"process ended (rc {proc.wait()}) before printing {marker!r}")


@pytest.mark.parametrize("sig, step",
                         [(signal.SIGTERM, 3), (signal.SIGINT, 1), (signal.SIGTERM, STEPS)])
def test_signal_saves_prints_resume_command_and_resume_is_bit_exact(
    sig, step, tmp_path, cli_env, reference):
  workdir = tmp_path / "run"
  proc = _start(workdir, cli_env, pause_after_step=step)
  _wait_for(proc, f"paused after step {step}")
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, err
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"capsjax: interrupted by {sig.name} after step {step}; "
                         f"checkpoint {step} saved in {workdir.absolute() / 'checkpoints'}")
  assert "Traceback" not in err
  assert Checkpointer(workdir).latest_step() == step
  # No evaluation after the signal, not even when it arrived in the last step.
  metrics = workdir / "metrics.jsonl"
  splits = [json.loads(l)["split"] for l in metrics.read_text().splitlines()
            ] if metrics.exists() else []
  assert splits == ["train"] * (step == STEPS) and not out.strip()
  # The printed command, run as printed through the `capsjax` console script, resumes the run
  # and ends where the uninterrupted run ended.
  command = shlex.split(last.split("Resume with: ")[1])
  assert command[0] == "capsjax" and command[1:] == _train_args(workdir)
  script = Path(sys.executable).with_name("capsjax")
  _resume(workdir, cli_env, expect_from=step, command=[str(script), *command[1:]])
  _assert_bit_identical(_arrays(workdir), reference["final"])


def _tmp_dirs(workdir: Path) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name)


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, cli_env, reference):
  workdir = tmp_path / "run"
  proc = _start(workdir, cli_env, pause_in_save=4)
  _wait_for(proc, "pausing in save of step 4")
  assert _tmp_dirs(workdir) and (Path(workdir, "checkpoints", _tmp_dirs(workdir)[0], "state")
                                 .is_dir())  # the real Orbax files are being written
  proc.kill()
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert Checkpointer(workdir).all_steps() == [2]  # the half-written 4 is not a checkpoint
  resumed = _resume(workdir, cli_env, expect_from=2)
  assert f"Removed {_tmp_name(resumed.stdout)}" in resumed.stdout
  assert _tmp_dirs(workdir) == []
  _assert_bit_identical(_arrays(workdir), reference["final"])


def _tmp_name(stdout: str) -> str:
  line = next(l for l in stdout.splitlines() if l.startswith("Removed "))
  assert line.endswith(": an incomplete checkpoint left by an interrupted save.")
  return line.split()[1].rstrip(":")


def test_second_signal_exits_at_once_and_keeps_last_complete_checkpoint(
    tmp_path, cli_env, reference):
  workdir = tmp_path / "run"
  proc = _start(workdir, cli_env, pause_after_step=3, pause_in_save=3)
  _wait_for(proc, "paused after step 3")
  proc.send_signal(signal.SIGTERM)
  _wait_for(proc, "pausing in save of step 3")  # the first signal's checkpoint is being written
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 143
  assert "second signal (SIGTERM): exiting now without saving" in err and "Traceback" not in err
  assert Checkpointer(workdir).all_steps() == [2] and len(_tmp_dirs(workdir)) == 1
  _resume(workdir, cli_env, expect_from=2)
  _assert_bit_identical(_arrays(workdir), reference["final"])


def test_nan_stops_with_step_keeps_last_good_checkpoint_and_resumes(tmp_path, cli_env,
                                                                   reference):
  workdir = tmp_path / "run"
  proc = run_cli(*_train_args(workdir), env={**cli_env, "CAPSJAX_FAULT_NAN_AT_STEP": "5"},
                 program=FAULTY_CLI)
  assert proc.returncode == 1
  lines = [l for l in proc.stderr.splitlines() if not l.startswith(("WARNING", "capsjax fault"))]
  assert lines == [
      f"capsjax: error: non-finite loss, gradient or updated parameters at step 5 (mean loss "
      f"nan); stopped without saving "
      f"it; the last good checkpoint is step 4 in {workdir.absolute() / 'checkpoints'}. Lower the "
      "learning rate or check the data."], proc.stderr
  assert Checkpointer(workdir).all_steps() == [2, 4]
  _assert_bit_identical(_arrays(workdir), reference["step4"])  # nothing lost up to step 4
  _resume(workdir, cli_env, expect_from=4)  # without the fault the run completes normally
  _assert_bit_identical(_arrays(workdir), reference["final"])


def _largest_file(checkpoint: Path) -> Path:
  return max((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_truncated_checkpoint_eval_error_and_train_fallback(tmp_path, cli_env, data_dir,
                                                           reference):
  workdir = tmp_path / "run"
  assert run_cli(*_train_args(workdir, 4), env=cli_env).returncode == 0
  victim = _largest_file(workdir / "checkpoints" / "4")
  size = victim.stat().st_size
  os.truncate(victim, size // 2)
  name = victim.relative_to(workdir / "checkpoints" / "4")

  ev = run_cli("eval", "--workdir", str(workdir), "--data-dir", data_dir, env=cli_env)
  assert ev.returncode == 2
  assert ev.stderr.strip().splitlines()[-1] == (
      f"capsjax: error: checkpoint 4 in {str(workdir.absolute() / 'checkpoints')!r} cannot be "
      f"restored: file {name} has {size // 2} bytes, expected {size} (truncated or overwritten).")
  assert "Traceback" not in ev.stderr

  resumed = _resume(workdir, cli_env, expect_from=2)
  assert "Warning: checkpoint 4 in" in resumed.stdout
  assert "falling back to the previous checkpoint" in resumed.stdout
  assert [p.name.split("-")[0] for p in (workdir / "corrupt_checkpoints").iterdir()] == ["4"]
  _assert_bit_identical(_arrays(workdir), reference["final"])


def test_other_model_settings_are_refused_by_name(tmp_path, cli_env):
  workdir = tmp_path / "run"
  assert run_cli(*_train_args(workdir, 2), env=cli_env).returncode == 0
  other = [*_train_args(workdir, 4), "--routing-iters", "2", "--model", "digit_dim=8"]
  proc = run_cli(*other, env=cli_env)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"capsjax: error: workdir {str(workdir)!r} holds a checkpoint of a different model "
      "(digit_dim: checkpoint 6 vs now 8; routing_iters: checkpoint 3 vs now 2); use a new "
      "--workdir or the original settings.")
  saved = (workdir / "config.json").read_text()  # the config is stored beside the checkpoints
  assert '"digit_dim": 6' in saved and '"routing_iters": 3' in saved
  assert Checkpointer(workdir).all_steps() == [2]
  # Another batch size is allowed (same model) but changes the data order: said on resume.
  proc = run_cli(*_train_args(workdir, 3), "--batch-size", "4", env=cli_env)
  assert proc.returncode == 0, proc.stderr
  assert ("Note: training settings changed since the checkpoint (batch_size: checkpoint 8 vs now "
          "4); the resumed run will differ from an uninterrupted one.") in proc.stdout
