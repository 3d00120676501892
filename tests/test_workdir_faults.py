"""One writer per workdir, and writes that fail cleanly: full disk, read-only, workdir gone.

Real `capsjax train` processes on the shipped MNIST with the tiny CapsNet of
test_fault_tolerance.py (6 steps of batch 8, checkpoints every 2 steps). Full and read-only
disks are real: a small tmpfs mounted for the test (needs root, as CI runs; skipped otherwise),
plus a fault hook that raises the real OSError(ENOSPC) inside the save, which runs anywhere.
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from capsjax.infra.checkpoint import Checkpointer
from capsjax.infra.workdir import (StorageError, WorkdirBusyError, WorkdirLock, append_line,
                                   write_text_atomic)
from conftest import FAULTY_CLI, run_cli
from test_fault_tolerance import (_arrays, _assert_bit_identical, _resume, _tmp_dirs,
                                  _train_args, _wait_for, reference)  # noqa: F401 (fixture)


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int):
  """A tmpfs of `size_kb` KiB mounted at `path` for the duration (skips the test if it cannot)."""
  path.mkdir(parents=True, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount(path: Path, options: str) -> None:
  subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def _start(workdir: Path, cli_env, *extra, **faults) -> subprocess.Popen:
  env = {**os.environ, **cli_env,
         **{f"CAPSJAX_FAULT_{k.upper()}": str(v) for k, v in faults.items()}}
  return subprocess.Popen([*FAULTY_CLI, *_train_args(workdir), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _error_line(proc, err: str) -> str:
  """The one `capsjax: error:` line of a failed run, after checking it is the only output of
  note (no traceback, nothing after it)."""
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  lines = [l for l in err.strip().splitlines()
           if not l.startswith(("WARNING:absl", "capsjax fault"))]
  assert len(lines) == 1 and lines[0].startswith("capsjax: error: "), err
  return lines[0].removeprefix("capsjax: error: ")


def _metrics_lines(workdir: Path) -> list[dict]:
  """Every line of metrics.jsonl parsed (fails on a partial line)."""
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _fill(directory: Path) -> None:
  """Writes a file into `directory` until its file system has no space left."""
  with open(directory / "filler", "wb", buffering=0) as f:
    for chunk in (65536, 4096, 1):
      with contextlib.suppress(OSError):
        while True:
          f.write(b"\0" * chunk)


# --- one writer per workdir ---------------------------------------------------------------------


def test_second_writer_is_refused_and_first_is_unaffected(tmp_path, cli_env, reference):
  workdir, go_on = tmp_path / "run", tmp_path / "go_on"
  first = _start(workdir, cli_env, "--log-every", "1", pause_after_step=3, continue_file=go_on)
  _wait_for(first, "paused after step 3")
  before = sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*"))

  second = run_cli(*_train_args(workdir), "--log-every", "1", env=cli_env)
  assert second.returncode == 2
  message = _error_line(second, second.stderr)
  assert message.startswith(f"workdir {str(workdir.absolute())!r} is in use by process "
                            f"{first.pid} on {socket.gethostname()} (started 20")
  assert message.endswith("UTC); wait for it or use another --workdir.")
  assert sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before

  go_on.touch()
  out, err = first.communicate(timeout=120)
  assert first.returncode == 0, err
  steps = [r["step"] for r in _metrics_lines(workdir) if r["split"] == "train"]
  assert steps == [1, 2, 3, 4, 5, 6]  # one writer: no duplicated or interleaved lines
  _assert_bit_identical(_arrays(workdir), reference["final"])


def test_lock_of_a_killed_run_does_not_block_the_next(tmp_path, cli_env, reference):
  workdir, go_on = tmp_path / "run", tmp_path / "go_on"
  first = _start(workdir, cli_env, pause_after_step=3, continue_file=go_on)
  _wait_for(first, "paused after step 3")
  first.kill()
  first.communicate(timeout=60)
  assert json.loads((workdir / ".lock").read_text())["pid"] == first.pid  # the file stays...
  _resume(workdir, cli_env, expect_from=2)  # ...but the kernel released the lock
  _assert_bit_identical(_arrays(workdir), reference["final"])


def test_eval_while_train_writes_reads_the_newest_complete_checkpoint(tmp_path, cli_env,
                                                                      data_dir):
  workdir, go_on = tmp_path / "run", tmp_path / "go_on"
  train = _start(workdir, cli_env, pause_in_save=4, continue_file=go_on)
  _wait_for(train, "pausing in save of step 4")
  assert _tmp_dirs(workdir)  # checkpoint 4 is fully written under its temporary name
  ev = run_cli("eval", "--workdir", str(workdir), "--data-dir", data_dir, "--no-progress",
               env=cli_env)  # no lock needed, and none taken
  assert ev.returncode == 0, ev.stderr
  result = json.loads(ev.stdout.strip().splitlines()[-1])
  assert result["step"] == 2 and result["test_examples"] == 16  # the run's --test-examples
  go_on.touch()
  _, err = train.communicate(timeout=120)
  assert train.returncode == 0, err
  assert Checkpointer(workdir).all_steps() == [2, 4, 6]


def test_lock_warns_and_runs_where_flock_is_unsupported(tmp_path, monkeypatch):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr("fcntl.flock", no_flock)  # as on an NFS mount with `nolock`
  said = []
  with WorkdirLock(tmp_path, report=said.append):
    pass
  assert said == [f"Warning: cannot lock workdir {str(tmp_path)!r} (No locks available: this "
                  "file system does not support flock); make sure no other run writes to it."]


def test_lock_is_exclusive_within_and_across_processes(tmp_path):
  with WorkdirLock(tmp_path):
    with pytest.raises(WorkdirBusyError, match=f"in use by process {os.getpid()} on "):
      with WorkdirLock(tmp_path):
        pass
    other = subprocess.run([sys.executable, "-c", (
        "import sys; from capsjax.infra.workdir import WorkdirLock\n"
        f"with WorkdirLock(sys.argv[1]): pass"), str(tmp_path)], capture_output=True, text=True)
    assert other.returncode == 1 and "WorkdirBusyError" in other.stderr
  with WorkdirLock(tmp_path):  # released on exit
    pass


# --- full disk ------------------------------------------------------------------------------------


def _assert_save_failed_cleanly(proc, err: str, workdir: Path, step: int, last: int) -> str:
  assert proc.returncode == 74, err
  message = _error_line(proc, err)
  directory = str(workdir.absolute() / "checkpoints")
  assert message.startswith(f"could not save checkpoint {step} in {directory!r}: ")
  assert message.endswith(f"; the last complete checkpoint is {last}")
  assert _tmp_dirs(workdir) == []  # the partial temporary folder was removed at once
  assert Checkpointer(workdir).all_steps() == list(range(2, last + 1, 2))
  return message


def test_full_disk_is_seen_before_the_save_starts(tmp_path, cli_env, reference):
  # 3 MiB: config.json and checkpoint 2 (~1.25 MB) fit; checkpoint 4 would not.
  with tmpfs(tmp_path / "disk", 3 * 1024) as disk:
    workdir = disk / "run"
    proc = run_cli(*_train_args(workdir), "--log-every", "1", env=cli_env)
    message = _assert_save_failed_cleanly(proc, proc.stderr, workdir, step=4, last=2)
    assert "no space left on device (needs about 2.3 MB, 1." in message
    assert [r["step"] for r in _metrics_lines(workdir)] == [1, 2, 3, 4]
    _remount(disk, "size=16m")  # space again: resume from 2, end as if nothing had happened
    _resume(workdir, cli_env, expect_from=2)
    _assert_bit_identical(_arrays(workdir), reference["final"])


def test_disk_filling_during_the_save(tmp_path, cli_env, reference):
  # Without the space check the save of checkpoint 4 starts and meets the real ENOSPC midway.
  with tmpfs(tmp_path / "disk", 2 * 1024) as disk:
    workdir = disk / "run"
    proc = run_cli(*_train_args(workdir), env={**cli_env, "CAPSJAX_FAULT_SKIP_SPACE_CHECK": "1"},
                   program=FAULTY_CLI)
    message = _assert_save_failed_cleanly(proc, proc.stderr, workdir, step=4, last=2)
    assert ": no space left on device (needs about " in message
    _remount(disk, "size=16m")
    _resume(workdir, cli_env, expect_from=2)
    _assert_bit_identical(_arrays(workdir), reference["final"])


def test_enospc_raised_inside_the_save_hook(tmp_path, cli_env, reference):
  workdir = tmp_path / "run"  # any file system: the fault hook raises the real OSError(ENOSPC)
  proc = run_cli(*_train_args(workdir), env={**cli_env, "CAPSJAX_FAULT_ENOSPC_IN_SAVE": "4"},
                 program=FAULTY_CLI)
  _assert_save_failed_cleanly(proc, proc.stderr, workdir, step=4, last=2)
  _resume(workdir, cli_env, expect_from=2)
  _assert_bit_identical(_arrays(workdir), reference["final"])


def test_full_disk_when_writing_metrics(tmp_path, cli_env, reference):
  # The first metrics line is written at step 6 (log_every 20): the file is new, so its first
  # byte needs a page of a disk that has none left. (An append into the last page's slack of an
  # existing file would succeed, as it should.)
  with tmpfs(tmp_path / "disk", 8 * 1024) as disk:
    workdir, go_on = disk / "run", tmp_path / "go_on"
    proc = _start(workdir, cli_env, pause_after_step=5, continue_file=go_on)
    _wait_for(proc, "paused after step 5")
    _fill(disk)
    go_on.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 74
    assert _error_line(proc, err) == (f"could not write metrics.jsonl in {str(workdir)!r}: no "
                                      "space left on device; the last complete checkpoint is 4")
    assert (workdir / "metrics.jsonl").read_bytes() == b""  # no partial line
    (disk / "filler").unlink()
    _resume(workdir, cli_env, expect_from=4)
    _assert_bit_identical(_arrays(workdir), reference["final"])


def test_config_json_is_replaced_whole_or_not_at_all(tmp_path):
  with tmpfs(tmp_path / "disk", 256) as disk:
    (disk / "config.json").write_text('{"old": true}')
    _fill(disk)
    with pytest.raises(StorageError, match="could not write config.json in .*: no space left on "
                                           "device$"):
      write_text_atomic(disk / "config.json", json.dumps({"new": "x" * 1_000_000}))
    assert (disk / "config.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in disk.iterdir()) == ["config.json", "filler"]


def test_a_line_that_fits_only_in_part_is_taken_back(tmp_path):
  with tmpfs(tmp_path / "disk", 256) as disk:
    metrics = disk / "metrics.jsonl"
    metrics.write_text("x" * 4000 + "\n")  # 95 bytes left in the file's last 4 KiB page
    _fill(disk)
    with pytest.raises(StorageError, match="could not write metrics.jsonl in .*: no space left on "
                                           "device$"):
      append_line(metrics, json.dumps({"step": 7, "pad": "y" * 200}))  # 95 bytes fit, not 220
    assert metrics.read_text() == "x" * 4000 + "\n"


# --- read-only or vanished workdir -------------------------------------------------------------


def test_read_only_workdir_mid_run(tmp_path, cli_env, reference):
  with tmpfs(tmp_path / "disk", 16 * 1024) as disk:
    workdir, go_on = disk / "run", tmp_path / "go_on"
    proc = _start(workdir, cli_env, pause_after_step=3, continue_file=go_on)
    _wait_for(proc, "paused after step 3")
    _remount(disk, "ro")
    go_on.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 74
    assert _error_line(proc, err) == (
        f"could not save checkpoint 4 in {str(workdir / 'checkpoints')!r}: read-only file "
        "system; the last complete checkpoint is 2")
    _remount(disk, "rw")
    _resume(workdir, cli_env, expect_from=2)
    _assert_bit_identical(_arrays(workdir), reference["final"])


@pytest.mark.parametrize("how", ["removed", "unmounted"])
def test_vanished_workdir_mid_run(how, tmp_path, cli_env):
  with tmpfs(tmp_path / "disk", 16 * 1024) if how == "unmounted" else contextlib.nullcontext(
      tmp_path) as disk:
    workdir, go_on = disk / "run", tmp_path / "go_on"
    proc = _start(workdir, cli_env, pause_after_step=3, continue_file=go_on)
    _wait_for(proc, "paused after step 3")
    if how == "removed":
      shutil.rmtree(workdir)
    else:
      subprocess.run(["umount", "-l", str(disk)], check=True)
    go_on.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 74
    assert _error_line(proc, err) == (
        f"could not save checkpoint 4: workdir {str(workdir)!r} is gone (removed, moved or "
        "unmounted during the run); nothing more can be saved there; "
        f"{workdir / 'checkpoints'} is not reachable any more")
    assert not workdir.exists()  # nothing was re-created in its place
