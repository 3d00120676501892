"""The pretrained network shipped with capsjax (`capsjax/pretrained/efficient_mnist.*`): it loads
without a workdir and classifies the first 1,000 MNIST test images as its record says;
`capsjax predict --pretrained` and `capsjax train --pretrained` use it; bad names, a decoder it
does not have, and another network are one error line each."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

import capsjax
from capsjax import cli
from capsjax.data import storage
from capsjax.infra import pretrained
from capsjax.nn.model import count_params
from conftest import run_cli

NAME = "efficient_mnist"
# Different CPUs (AVX2, AVX-512) may round the borderline cases differently: 2 in 1,000.
TOLERANCE = 0.002


@pytest.fixture(scope="module")
def model():
  return capsjax.load_pretrained(NAME)


def test_it_is_shipped_small_and_recorded():
  assert NAME in pretrained.available()
  record, arrays = pretrained.read(NAME)
  npz = pretrained.DIRECTORY / f"{NAME}.npz"
  assert npz.stat().st_size < 2 * 1024 * 1024
  assert record["preset"] == "efficient_mnist_cpu"
  assert record["model"]["arch"] == "efficient_capsnet"
  assert record["model"]["reconstruction"] is False
  assert record["parameters"] == 161_824
  assert 0.99 < record["accuracy"]["test"] <= 1.0
  assert record["accuracy"]["test_examples"] == 10_000
  assert all(a.dtype == np.float32 for a in arrays.values())


def test_first_1000_test_images_as_recorded(model, data_dir):
  """The shipped network, loaded as a user loads it, classifies the first 1,000 MNIST test
  images with the accuracy its record gives (`experiments/export_pretrained.py` measured it)."""
  test = storage.load_split("mnist", "test", data_dir, limit=1000)
  accuracy = float(np.mean(model.predict(test.images).classes == np.asarray(test.labels)))
  assert abs(accuracy - model.record["accuracy"]["first_1000"]) <= TOLERANCE
  assert count_params(model.model) == 161_824
  assert model.model.decoder is None


def test_predict_command_on_digit_files(model, data_dir, tmp_path, cli_env):
  """`capsjax predict --pretrained` on PNG files (light on dark, and the same digits dark on
  light): one JSON line each, the classes of `TrainedModel.predict`."""
  test = storage.load_split("mnist", "test", data_dir, limit=3)
  files = []
  for i, image in enumerate(test.images):
    for kind, pixels in (("light", image[..., 0]), ("dark", 255 - image[..., 0])):
      path = tmp_path / f"digit{i}_{kind}.png"
      Image.fromarray(np.pad(pixels, 10, constant_values=int(pixels[0, 0]))).save(path)
      files.append(path)
  result = run_cli("predict", "--pretrained", NAME, *map(str, files), env=cli_env, timeout=300)
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r["file"] for r in records] == list(map(str, files))
  expected = np.repeat(np.asarray(test.labels), 2)
  assert [r["class"] for r in records] == expected.tolist()
  assert all(len(r["scores"]) == 10 for r in records)


@pytest.mark.parametrize("args, message", [
    (["--pretrained", "nope"], "unknown pretrained model 'nope'; expected one of efficient_mnist"),
    (["--pretrained", NAME, "--reconstruct", "OUT"], "has no decoder"),
    (["--pretrained", NAME, "--step", "5"], "--step picks a checkpoint of --workdir"),
])
def test_predict_bad_input_is_one_line(args, message, tmp_path, capsys):
  image = tmp_path / "x.png"
  Image.fromarray(np.zeros((28, 28), np.uint8) + 200).save(image)
  args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
  assert cli.main(["predict", *args, str(image)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("capsjax: error:") and message in err[0], err


def test_train_starts_from_the_pretrained_weights(data_dir, tmp_path, model):
  """`capsjax train --pretrained` with the network it was trained as: the weights it starts from
  are the shipped ones (after 1 step at the floor learning rate, the test accuracy is the
  shipped network's, not a fresh one's ~10%)."""
  workdir = tmp_path / "finetune"
  code = cli.main(["train", "--config", "efficient_mnist_cpu", "--pretrained", NAME,
                           "--max-steps", "1", "--batch-size", "8", "--test-examples", "200",
                           "--no-progress", "--data-dir", data_dir, "--workdir", str(workdir)])
  assert code == 0
  record = json.loads((workdir / "config.json").read_text())
  assert record["config"]["pretrained"] == NAME
  final = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()][-1]
  assert final["test_accuracy"] >= 0.95


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--config", "quick"], "pretrained model 'efficient_mnist' is another network"),
    ("quick", ["--config", "efficient_mnist_cpu"], "holds a checkpoint of a different model"),
    ("multimnist_cpu", ["--config", "efficient_mnist_cpu"],
     "holds a checkpoint of a different model"),  # finished, on other data: still refused
    (None, ["--config", "efficient_mnist_cpu", "--routing", "dynamic", "--routing-iters", "3"],
     "routing"),
])
def test_train_with_another_network_is_one_line(setup, args, message, data_dir, tmp_path, capsys):
  """A pretrained network for a run of another network, or into a workdir that holds one: one
  `capsjax: error:` line, exit 2, nothing trained."""
  workdir = tmp_path / "w"
  common = ["--max-steps", "1", "--batch-size", "4", "--test-examples", "8", "--no-progress",
            "--data-dir", data_dir, "--workdir", str(workdir)]
  if setup:
    from conftest import TINY_MODEL_ARGS
    assert cli.main(["train", "--config", setup, *TINY_MODEL_ARGS, *common]) == 0
    capsys.readouterr()
  before = sorted(p.name for p in workdir.rglob("*")) if workdir.exists() else []
  assert cli.main(["train", *args, "--pretrained", NAME, *common]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("capsjax: error:") and message in err[0], err
  after = sorted(p.name for p in workdir.rglob("*")) if workdir.exists() else []
  assert "checkpoints" not in after or after == before


def test_export_script_writes_a_network_that_loads(data_dir, tmp_path, cli_env):
  """experiments/export_pretrained.py on a (2-step) run: NAME.json + NAME.npz that
  `load_pretrained(directory=...)` reads, without the decoder, classifying as the run does (the
  script checks that on all 10,000 test images and records the accuracy)."""
  from conftest import REPO
  workdir = tmp_path / "run"
  train = run_cli("train", "--config", "efficient_mnist_cpu", "--max-steps", "2", "--batch-size",
                  "8", "--train-examples", "64", "--test-examples", "16", "--no-progress",
                  "--workdir", str(workdir), env=cli_env, timeout=600)
  assert train.returncode == 0, train.stderr
  out = tmp_path / "shipped"
  export = run_cli(str(REPO / "experiments" / "export_pretrained.py"), "--workdir", str(workdir),
                   "--name", "tiny", "--preset", "efficient_mnist_cpu", "--out", str(out),
                   env=cli_env, timeout=600, program=[sys.executable])
  assert export.returncode == 0, export.stderr
  summary = json.loads(export.stdout.strip().splitlines()[-1])
  assert summary["parameters"] == 161_824 and summary["npz_bytes"] < 2 * 1024 * 1024
  record, arrays = pretrained.read("tiny", out)
  assert record["step"] == 2 and record["accuracy"] == summary["accuracy"]
  assert not any(name.startswith("decoder/") for name in arrays)
  shipped = capsjax.load_pretrained("tiny", directory=out)
  run = capsjax.load(workdir)
  test = storage.load_split("mnist", "test", data_dir, limit=64)
  np.testing.assert_array_equal(shipped.predict(test.images).classes,
                                run.predict(test.images).classes)


def test_digits_drawn_by_hand(model):
  """Three digits drawn for this test (experiments/drawn_digits: a 7 and a 4 in dark ink on
  paper, one of them blue on cream RGB, and a 3 in light chalk on a dark board, 160-220 px),
  classified from their files through the conversion `capsjax predict` uses."""
  from conftest import REPO
  folder = REPO / "experiments" / "drawn_digits"
  files = ["seven_dark_on_light.png", "three_light_on_dark.png", "four_dark_on_light.png"]
  prediction = model.predict([str(folder / f) for f in files])
  assert prediction.classes.tolist() == [7, 3, 4]
  assert prediction.confident.all()
