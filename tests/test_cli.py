"""The `capsjax` command: a real end-to-end run on MNIST, resume, eval, and bad input."""

import contextlib
import json
import os

import pytest

from capsjax import cli
from conftest import run_cli as _run

SMOKE = ["--batch-size", "8", "--train-examples", "512", "--test-examples", "64",
         "--no-progress"]


def test_train_resume_and_eval_end_to_end(tmp_path, data_dir):
  workdir = tmp_path / "run"
  first = _run("train", "--config", "quick", "--data-dir", data_dir, "--workdir", str(workdir),
               "--max-steps", "3", "--checkpoint-every", "2", "--keep-checkpoints", "2", *SMOKE)
  assert first.returncode == 0, first.stderr
  result = json.loads(first.stdout.strip().splitlines()[-1])
  assert result["step"] == 3 and 0.0 <= result["test_accuracy"] <= 1.0
  assert result["test_examples"] == 64
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"train", "test"} <= {r["split"] for r in records}
  train_rec = [r for r in records if r["split"] == "train"][-1]
  for key in ("loss", "margin_loss", "reconstruction_loss", "train_accuracy", "images_per_sec"):
    assert key in train_rec
  assert (workdir / "config.json").exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]

  # Same workdir, longer run: resumes from step 3 instead of starting over.
  second = _run("train", "--config", "quick", "--workdir", str(workdir), "--max-steps", "5",
                "--checkpoint-every", "2", "--keep-checkpoints", "2", *SMOKE,
                env={"TFDS_DATA_DIR": data_dir})
  assert second.returncode == 0, second.stderr
  assert "Resuming from checkpoint at step 3" in second.stdout
  assert json.loads(second.stdout.strip().splitlines()[-1])["step"] == 5
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "5"]

  ev = _run("eval", "--workdir", str(workdir), "--data-dir", data_dir, "--test-examples", "100")
  assert ev.returncode == 0, ev.stderr
  last = json.loads(ev.stdout.strip().splitlines()[-1])
  assert last["step"] == 5 and last["test_examples"] == 100
  assert 0.0 <= last["test_accuracy"] <= 1.0


BAD_TRAIN = {
    "missing data dir": (["--data-dir", "{tmp}/nope"], "does not exist"),
    "empty data dir": (["--data-dir", "{tmp}/empty"], "is empty"),
    "unknown dataset": (["--dataset", "cifar100"], "unknown dataset 'cifar100'"),
    "unknown config": (["--config", "huge"], "unknown config 'huge'; expected one of paper, quick"),
    "zero batch size": (["--batch-size", "0"], "batch_size must be positive, got 0"),
    "negative steps": (["--max-steps", "-3"], "max_steps must be positive, got -3"),
    "zero epochs": (["--epochs", "0"], "epochs must be positive, got 0"),
    "zero routing iters": (["--routing-iters", "0"], "routing_iters must be positive, got 0"),
    "workdir is a file": (["--workdir", "{tmp}/afile"], "is not a directory"),
    "non-integer steps": (["--max-steps", "ten"], "invalid int value: 'ten'"),
    "zero train examples": (["--train-examples", "0"],
                            "--train-examples must be a positive integer, got 0"),
    "unknown model setting": (["--model", "capsule_size=8"],
                              "unknown model setting 'capsule_size'"),
    "model setting without value": (["--model", "digit_dim"],
                                    "--model expects KEY=VALUE (e.g. digit_dim=8), got "
                                    "'digit_dim'"),
    "model value not JSON": (["--model", "digit_dim=eight"], "VALUE must be JSON"),
    "zero capsule size": (["--model", "primary_dim=0"],
                          "model setting primary_dim must be a positive integer, got 0"),
    "bad decoder widths": (["--model", "decoder_hidden=[512,-1]"],
                           "decoder_hidden must be a non-empty list of positive integers"),
    "kernel too large": (["--model", "conv_kernel=30"], "is too small for a 30x30 conv"),
    "unknown routing rule": (["--routing", "nope"], "unknown routing rule 'nope'; available: "
                             "dynamic, em, inverted_dot_product, self_attention, uniform."),
    "option the rule does not take": (["--routing", "uniform", "--routing-option", "leaky=true"],
                                      "routing rule 'uniform' does not take option(s) leaky"),
    "malformed routing option": (["--routing-option", "leaky"],
                                 "--routing-option expects KEY=VALUE"),
    "vote chunks with em": (["--routing", "em", "--vote-chunk-size", "64"],
                            "vote_chunk_size works with routing 'dynamic' only and must be >= 1, "
                            "got 64 with routing 'em'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_bad_train_input_gives_one_line(case, tmp_path, capsys, data_dir):
  (tmp_path / "empty").mkdir()
  (tmp_path / "afile").write_text("x")
  extra, message = BAD_TRAIN[case]
  argv = ["train", "--data-dir", data_dir, "--workdir", str(tmp_path / "w"), "--max-steps", "2"]
  argv += [a.format(tmp=tmp_path) for a in extra]
  with pytest.raises(SystemExit) if case == "non-integer steps" else contextlib.nullcontext():
    code = cli.main(argv)
    assert code == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_workdir(tmp_path, capsys, data_dir):
  if os.geteuid() == 0:
    pytest.skip("root can read any directory")
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o000)
  assert cli.main(["train", "--data-dir", data_dir, "--workdir", str(locked)]) == 2
  assert "not readable and writable" in capsys.readouterr().err


def test_eval_without_checkpoint(tmp_path, capsys, data_dir):
  (tmp_path / "w").mkdir()
  assert cli.main(["eval", "--workdir", str(tmp_path / "w"), "--data-dir", data_dir]) == 2
  err = capsys.readouterr().err
  assert "has no checkpoints" in err and len(err.strip().splitlines()) == 1


def test_missing_data_dir_in_subprocess_has_no_traceback(tmp_path):
  proc = _run("train", "--workdir", str(tmp_path / "w"), env={"TFDS_DATA_DIR": ""})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "capsjax: error: no data dir given: pass --data-dir DIR or set TFDS_DATA_DIR to a TFDS "
      "data_dir that holds mnist/3.0.1 (array_record)."]
