"""The CLI as a Unix tool and a run that remembers what it knows: output into a closed pipe,
--version, --config's help from the preset registry, the data dir recorded with the run, a
finished run that is not evaluated again, a refusal decided from the run's record before any
data is read, and the sentence after `train`'s JSON."""

import json
import subprocess

import pytest

from capsjax import cli
from capsjax.data import storage
from capsjax.train import presets
from conftest import CLI, TINY_MODEL_ARGS

STEPS = ["--max-steps", "4", "--batch-size", "16", "--log-every", "2", "--checkpoint-every",
         "2", "--train-examples", "128", "--test-examples", "48", "--no-progress",
         *TINY_MODEL_ARGS]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  """A finished 4-step run of the tiny CapsNet, trained through the CLI."""
  workdir = tmp_path_factory.mktemp("run") / "w"
  assert cli.main(["train", "--workdir", str(workdir), "--data-dir", data_dir, *STEPS]) == 0
  return workdir


def _no_data(monkeypatch):
  """Makes every read of a stored split fail: what runs after this never read the data."""

  def refuse(*args, **kwargs):
    raise AssertionError("the data was read")

  monkeypatch.setattr(storage, "load_split", refuse)


def test_output_into_a_closed_pipe_is_no_error():
  proc = subprocess.Popen([*CLI, "rules", "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  assert proc.stdout.read(10) == b'{"rules": '
  proc.stdout.close()  # as `| head -c 10` does
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=60) in (0, 141) and "Traceback" not in err and "Error" not in err


def test_version_and_the_presets_in_the_help(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["--version"])
  assert exit_.value.code == 0
  assert capsys.readouterr().out.strip() == f"capsjax {__import__('capsjax').__version__}"
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  help_text = " ".join(capsys.readouterr().out.split())
  assert f"one of {', '.join(presets.available())}" in help_text
  assert len(presets.available()) == 20


def test_the_run_records_its_data_dir_and_length(run, data_dir):
  record = json.loads((run / "config.json").read_text())
  assert record["data_dir"] == storage.resolve_data_dir(data_dir).as_posix()
  assert record["total_steps"] == 4


def test_eval_and_resume_read_the_recorded_data_dir(run, monkeypatch, capsys):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  assert cli.main(["eval", "--workdir", str(run), "--no-progress"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_examples"] == 48


def test_a_finished_run_prints_its_result_without_evaluating_again(run, data_dir, monkeypatch,
                                                                  capsys):
  lines = (run / "metrics.jsonl").read_text()
  final = json.loads(lines.splitlines()[-1])
  _no_data(monkeypatch)  # decided from the workdir alone: no data read, nothing evaluated
  assert cli.main(["train", "--workdir", str(run), "--data-dir", data_dir, *STEPS]) == 0
  out, err = capsys.readouterr()
  assert "Already trained to step 4 (>= 4) and evaluated" in out
  assert json.loads(out.strip().splitlines()[-1]) == final
  assert (run / "metrics.jsonl").read_text() == lines  # no second record
  assert err.startswith(f"capsjax: test accuracy {final['test_accuracy']:.2%} on 48 test examples"
                        " at step 4; checkpoint in ")


def test_another_network_is_refused_before_the_data_is_read(run, data_dir, monkeypatch,
                                                           capsys):
  _no_data(monkeypatch)
  code = cli.main(["train", "--workdir", str(run), "--data-dir", data_dir, *STEPS,
                   "--routing-iters", "2"])
  assert code == 2
  assert capsys.readouterr().err == (
      f"capsjax: error: workdir {str(run)!r} holds a checkpoint of a different model "
      "(routing_iters: checkpoint 3 vs now 2); use a new --workdir or the original settings.\n")


def test_train_ends_with_a_sentence_and_measures_training_alone(tmp_path, data_dir, capsys):
  workdir = tmp_path / "w"
  assert cli.main(["train", "--workdir", str(workdir), "--data-dir", data_dir, *STEPS]) == 0
  out, err = capsys.readouterr()
  result = json.loads(out.strip().splitlines()[-1])
  # train_seconds: the training steps alone, not start-up, data, checkpoints or evaluation
  assert 0 < result["train_seconds"] < result["elapsed_s"]
  assert err.splitlines()[-1] == (
      f"capsjax: test accuracy {result['test_accuracy']:.2%} on 48 test examples at step 4 "
      f"({round(result['train_seconds'])} s of training); checkpoint in {workdir}/checkpoints. "
      f"Next: capsjax eval --workdir {workdir}, capsjax viz --workdir {workdir}, "
      f"capsjax predict --workdir {workdir} IMAGE.png")


def test_errors_name_the_one_bad_value_and_what_exists(run, data_dir, capsys):
  assert cli.main(["eval", "--workdir", str(run), "--step", "3", "--no-progress"]) == 2
  assert capsys.readouterr().err == (f"capsjax: error: no checkpoint of step 3 in "
                                     f"{str(run / 'checkpoints')!r}; it holds steps 2, 4.\n")
  assert cli.main(["train", "--workdir", str(run), "--data-dir", data_dir, *STEPS,
                   "--eval-every", "-1"]) == 2
  assert capsys.readouterr().err == "capsjax: error: eval_every must be >= 0, got -1.\n"


def test_predict_into_a_closed_pipe_is_no_error(run, data_dir, tmp_path):
  from PIL import Image

  digits = storage.load_split("mnist", "test", data_dir, limit=40).images[..., 0]
  files = []
  for i, digit in enumerate(digits):
    files.append(str(tmp_path / f"d{i}.png"))
    Image.fromarray(digit).save(files[-1])
  proc = subprocess.Popen([*CLI, "predict", "--workdir", str(run), *files],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  assert json.loads(proc.stdout.readline())["file"] == files[0]
  proc.stdout.close()  # as `| head -1` does
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=120) in (0, 141) and "Traceback" not in err and "Error" not in err


def test_pictures_of_one_name_and_lists_of_arrays(run, data_dir, tmp_path, capsys):
  import numpy as np
  from PIL import Image

  import capsjax

  digit = 255 - storage.load_split("mnist", "test", data_dir, limit=1).images[0, ..., 0]
  photo = np.asarray(Image.fromarray(digit).resize((90, 90)))  # dark on light, larger
  Image.fromarray(photo).save(tmp_path / "seven.png")
  Image.fromarray(photo).save(tmp_path / "seven.jpg")
  out_dir = tmp_path / "out"
  assert cli.main(["predict", "--workdir", str(run), str(tmp_path / "seven.png"),
                   str(tmp_path / "seven.jpg"), "--reconstruct", str(out_dir)]) == 0
  written = [json.loads(l)["reconstruction"] for l in capsys.readouterr().out.splitlines()]
  assert len(set(written)) == 2 and sorted(p.name for p in out_dir.iterdir()) == [
      "seven.input.png", "seven.jpg.input.png", "seven.jpg.reconstruction.png",
      "seven.reconstruction.png"]
  # A list of arrays of other shapes is a list of pictures, each converted (not one batch).
  model = capsjax.load(run)
  rgb = np.stack([photo] * 3, -1)[:80]
  assert model.predict([photo, photo]).classes.shape == (2,)
  np.testing.assert_array_equal(model.predict([photo, rgb]).scores[0],
                                model.predict(str(tmp_path / "seven.png")).scores[0])


def test_bare_capsjax_names_its_commands(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main([])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == ("capsjax: error: the following arguments are required: "
                                     "command (one of train, eval, rules, viz, predict; capsjax "
                                     "--help for more)\n")
