"""The `capsjax` command: a real end-to-end run on MNIST, resume, eval, and bad input."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from capsjax import cli
from capsjax.train import model_state, presets
from capsjax.train import config as config_lib
from conftest import TINY_MODEL_ARGS, assert_finite, records, run_cli as _run

SMOKE = ["--batch-size", "8", "--train-examples", "512", "--test-examples", "64",
         "--no-progress"]


def test_train_resume_and_eval_end_to_end(tmp_path, data_dir):
  workdir = tmp_path / "run"
  first = _run("train", "--config", "quick", "--data-dir", data_dir, "--workdir", str(workdir),
               "--max-steps", "3", "--checkpoint-every", "2", "--keep-checkpoints", "2", *SMOKE)
  assert first.returncode == 0, first.stderr
  result = json.loads(first.stdout.strip().splitlines()[-1])
  assert result["step"] == 3 and result["test_examples"] == 64
  # config.json holds the preset with the flags applied, and reads back as the same TrainConfig;
  # --test-examples and --train-examples are recorded too (eval and viz of the run default to
  # the first; a resume without the second is told the data changed).
  expected = dataclasses.replace(presets.get("quick"), max_steps=3, batch_size=8,
                                 checkpoint_every=2, keep_checkpoints=2, test_examples=64,
                                 train_examples=512)
  stored = json.loads((workdir / "config.json").read_text())
  assert config_lib.TrainConfig(**stored["config"]) == expected
  assert stored["model"] == {"arch": "capsnet", "input_shape": [28, 28, 1], "num_classes": 10,
                             "routing": "dynamic", "routing_iters": 3, "routing_options": {}}
  train_3, = records(workdir, "train")
  test_3, = records(workdir, "test")
  assert train_3["step"] == test_3["step"] == 3 and test_3["test_examples"] == 64
  for record in (train_3, test_3):
    assert_finite(record)
  assert train_3["loss"] == pytest.approx(train_3["margin_loss"]
                                          + 0.0005 * train_3["reconstruction_loss"], rel=1e-5)
  assert train_3["learning_rate"] == pytest.approx(1e-3) and train_3["images_per_sec"] > 0
  assert result == {**test_3, "train_seconds": result["train_seconds"]}
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]

  # Same workdir, longer run: resumes from step 3 instead of starting over.
  second = _run("train", "--config", "quick", "--workdir", str(workdir), "--max-steps", "5",
                "--checkpoint-every", "2", "--keep-checkpoints", "2", *SMOKE,
                env={"TFDS_DATA_DIR": data_dir})
  assert second.returncode == 0, second.stderr
  assert "Resuming from checkpoint at step 3" in second.stdout
  assert json.loads(second.stdout.strip().splitlines()[-1])["step"] == 5
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "5"]
  _, train_5 = records(workdir, "train")
  _, test_5 = records(workdir, "test")
  assert_finite(train_5)
  assert_finite(test_5)
  # Two more steps of training lower the loss on the same 64 test images, and the train loss.
  assert test_5["test_loss"] < test_3["test_loss"] and train_5["loss"] < train_3["loss"]

  # eval restores checkpoint 5 and reproduces the run's own final evaluation.
  ev = _run("eval", "--workdir", str(workdir), "--data-dir", data_dir, "--test-examples", "64")
  assert ev.returncode == 0, ev.stderr
  last = json.loads(ev.stdout.strip().splitlines()[-1])
  assert last["step"] == 5 and last["test_examples"] == 64 and last["dataset"] == "mnist"
  for key in ("test_accuracy", "test_loss", "test_margin_loss", "test_reconstruction_loss"):
    assert last[key] == pytest.approx(test_5[key], rel=1e-6), key


BAD_TRAIN = {
    "missing data dir": (["--data-dir", "{tmp}/nope"], "does not exist"),
    "empty data dir": (["--data-dir", "{tmp}/empty"], "is empty"),
    "unknown dataset": (["--dataset", "cifar100"], "unknown dataset 'cifar100'"),
    "test-only dataset": (["--dataset", "affnist_style"],
                          "dataset 'affnist_style' has no train split (only test)"),
    "multimnist on host batches": (["--dataset", "multimnist", "--pipeline", "host"],
                                   "use --pipeline device or auto, not host"),
    "multimnist baseline": (["--dataset", "multimnist", "--arch", "baseline"],
                            "trains the capsnet arch only"),
    "unknown config": (["--config", "huge"], "unknown config 'huge'; expected one of affnist, "
                       "affnist_baseline_cpu, affnist_cpu, baseline, cifar10, cifar10_cpu, "
                       "efficient_mnist, efficient_mnist_cpu, hour, multimnist"),
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
    "routing option of the wrong type": (["--routing-option", "leaky='no'"],
                                         "routing option leaky of rule 'dynamic' must be a bool "
                                         "(default False), got 'no'."),
    "float routing option given a bool": (["--routing", "em", "--routing-option",
                                           "final_lambda=true"],
                                          "routing option final_lambda of rule 'em' must be a "
                                          "float (default 0.5), got True."),
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
  if case == "non-integer steps":  # argparse rejects it and exits itself
    with pytest.raises(SystemExit) as exited:
      cli.main(argv)
    code = exited.value.code
  else:
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


# 24 training images in batches of 8: one epoch is 3 steps.
EPOCH_RUN = ["train", "--epochs", "1", "--batch-size", "8", "--train-examples", "24",
             "--test-examples", "16", "--eval-every", "2", "--routing-option", "leaky=True",
             "--routing-option", "stop_gradient=false", *TINY_MODEL_ARGS]


def _main(argv) -> tuple[int, str, str]:
  """cli.main(argv) in this process: (exit status, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(argv)
  return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def epoch_run(data_dir, tmp_path_factory):
  """EPOCH_RUN with the CLI's defaults otherwise (progress bars on): (workdir, code, out, err)."""
  workdir = tmp_path_factory.mktemp("epoch_run")
  return (workdir, *_main([*EPOCH_RUN, "--data-dir", data_dir, "--workdir", str(workdir)]))


def test_epochs_eval_every_routing_options_and_progress_bar(epoch_run):
  workdir, code, out, err = epoch_run
  assert code == 0, err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 3  # --epochs 1 = 24 // 8 steps
  assert "train mnist: 100%" in err and "3/3" in err and "eval: " in err  # tqdm bars (stderr)
  assert "step 2: test accuracy" in out  # --eval-every 2, printed above the bar
  assert [r["step"] for r in records(workdir, "test")] == [2, 3]
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["config"]["epochs"] == 1 and stored["config"]["max_steps"] is None
  assert stored["config"]["eval_every"] == 2
  # VALUE is JSON (false) or a Python literal (True); both reach the model as bools.
  options = {"leaky": True, "stop_gradient": False}
  assert stored["model"]["routing_options"] == options
  graphdef, state, meta = model_state.load_for_eval(workdir)  # the model alone
  assert meta["model"]["routing_options"] == options
  model = nnx.merge(graphdef, state)
  assert model.digits.options == options and model.digits.vote_chunk_size is None


def test_vote_chunk_size_run_matches_the_plain_run(epoch_run, tmp_path, data_dir):
  plain_dir, plain_code, _, _ = epoch_run
  assert plain_code == 0
  code, out, err = _main([*EPOCH_RUN, "--data-dir", data_dir, "--workdir", str(tmp_path),
                          "--no-progress", "--vote-chunk-size", "100"])
  assert code == 0, err
  assert "train mnist" not in err and "eval: " not in err  # --no-progress: no bars
  runs = {}
  for name, workdir in (("plain", plain_dir), ("chunked", tmp_path)):
    graphdef, state, _ = model_state.load_for_eval(workdir)
    runs[name] = (records(workdir, "test"), nnx.merge(graphdef, state), state)
  (plain_tests, plain_model, plain_state), (chunked_tests, chunked_model, chunked_state) = (
      runs["plain"], runs["chunked"])
  assert plain_model.digits.vote_chunk_size is None
  assert chunked_model.digits.vote_chunk_size == 100  # 144 capsules: 2 chunks, one padded
  assert [r["step"] for r in chunked_tests] == [r["step"] for r in plain_tests] == [2, 3]
  for a, b in zip(plain_tests, chunked_tests):
    assert a["test_accuracy"] == b["test_accuracy"]
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
  # After 3 Adam steps (each moves a weight by up to ~1e-3) the parameters still agree.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-6),
               nnx.to_pure_dict(chunked_state), nnx.to_pure_dict(plain_state))


def test_keyboard_interrupt_outside_the_training_loop(tmp_path, data_dir, capsys, monkeypatch):
  # Ctrl-C before the signal handlers are installed (here: while reading the data).
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr("capsjax.data.storage.load_split", interrupted)
  try:
    code = cli.main(["train", "--data-dir", data_dir, "--workdir", str(tmp_path / "w"),
                     "--max-steps", "1", "--no-progress"])
  except KeyboardInterrupt:
    pytest.fail("KeyboardInterrupt escaped cli.main")
  assert code == 130
  assert capsys.readouterr().err == "capsjax: interrupted\n"


def _console_script() -> str:
  script = os.path.join(os.path.dirname(sys.executable), "capsjax")
  assert os.access(script, os.X_OK), f"no capsjax console script beside {sys.executable}"
  return script


@pytest.mark.parametrize("program", ["python -m capsjax", "capsjax"])
def test_entry_points(program, tmp_path, data_dir):
  command = [sys.executable, "-m", "capsjax"] if program != "capsjax" else [_console_script()]
  bad = subprocess.run([*command, "train", "--data-dir", data_dir, "--workdir",
                        str(tmp_path / "w"), "--max-steps", "0"], capture_output=True, text=True)
  assert bad.returncode == 2  # main()'s status reaches the shell
  assert bad.stderr == "capsjax: error: max_steps must be positive, got 0.\n"
