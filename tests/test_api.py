"""`capsjax.fit` / `capsjax.load(...).predict` from Python, and `capsjax predict` on image files."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

import capsjax
from capsjax import cli, data, images
from capsjax.train import steps
from capsjax.train.config import TrainConfig
from conftest import run_cli

TINY = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
            decoder_hidden=[32, 64])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
  """A tiny CapsNet trained for 30 steps through `capsjax.fit`."""
  path = tmp_path_factory.mktemp("fit")
  result = capsjax.fit("quick", path, data_dir, progress=False, train_examples=512,
                       test_examples=200, max_steps=30, batch_size=16, model=TINY)
  assert result["step"] == 30 and result["test_examples"] == 200
  return path


def test_fit_runs_the_cli_loop_and_rejects_unknown_settings(workdir, tmp_path, data_dir):
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == [20, 30]
  assert json.loads((workdir / "config.json").read_text())["config"]["max_steps"] == 30
  with pytest.raises(ValueError, match="unknown TrainConfig field.s. max_step; expected"):
    capsjax.fit("quick", tmp_path / "x", data_dir, max_step=3)


def test_predict_agrees_with_evaluation(workdir, data_dir, capsys):
  model = capsjax.load(workdir)
  assert model.step == 30 and model.input_shape == (28, 28, 1) and model.num_classes == 10
  test = data.load_split("mnist", "test", data_dir, limit=200)
  pred = model.predict(test.images)  # 200 images in batches of 100
  assert pred.classes.shape == (200,) and pred.scores.shape == (200, 10)
  assert pred.capsules.shape == (200, 10, 6) and pred.reconstructions.shape == (200, 28, 28, 1)
  np.testing.assert_array_equal(pred.classes, pred.scores.argmax(-1))
  np.testing.assert_allclose(pred.scores, np.linalg.norm(pred.capsules, axis=-1), rtol=1e-5,
                             atol=1e-6)
  # The same accuracy as `capsjax eval` of that checkpoint on the same images.
  assert cli.main(["eval", "--workdir", str(workdir), "--data-dir", data_dir, "--test-examples",
                   "200", "--batch-size", "50"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["step"] == 30 and result["test_examples"] == 200
  assert np.mean(pred.classes == test.labels) == pytest.approx(result["test_accuracy"])
  # One image without a batch axis, and float input, give the same answer.
  one = model.predict(test.images[7])
  np.testing.assert_allclose(one.scores[0], pred.scores[7], rtol=1e-5, atol=1e-6)
  as_float = model.predict(test.images[:3].astype(np.float32) / 255.0)
  np.testing.assert_allclose(as_float.scores, pred.scores[:3], rtol=1e-5, atol=1e-6)


def test_load_and_predict_bad_input(workdir, tmp_path):
  with pytest.raises(ValueError, match="has no checkpoints/; train into it first"):
    capsjax.load(tmp_path)
  model = capsjax.load(workdir)
  with pytest.raises(ValueError, match=r"images must have shape \[B, 28, 28, 1\] or \[28, 28, 1\], "
                                       r"got \(2, 32, 32, 1\)"):
    model.predict(np.zeros((2, 32, 32, 1), np.uint8))
  with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values from 3"):
    model.predict(np.full((1, 28, 28, 1), 3.0, np.float32))


def test_read_image_converts_and_says_what_it_did(tmp_path):
  rgba = np.zeros((56, 56, 4), np.uint8)
  rgba[..., :3] = 255  # white figure...
  rgba[20:36, 20:36, 3] = 255  # ...opaque only in the middle; transparent elsewhere
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  array, done = images.read_image(tmp_path / "a.png", (28, 28, 1))
  assert done == ["transparency flattened onto black", "RGB converted to grey",
                  "cropped to the ink (16x16 of 56x56 pixels) and scaled by 1.25 to fit a 20x20 "
                  "box (aspect ratio kept, anti-aliased)", "centred by its centre of mass in 28x28"]
  assert array.shape == (28, 28, 1) and array.dtype == np.uint8
  assert array[14, 14, 0] == 255 and array[2, 2, 0] == 0

  Image.fromarray(np.full((28, 28), 230, np.uint8)).save(tmp_path / "paper.jpg")
  with pytest.raises(ValueError, match="paper.jpg: blank picture: every pixel is grey level 230"):
    images.read_image(tmp_path / "paper.jpg", (28, 28, 1))

  grey16 = np.full((28, 28), 1000, np.uint16)
  grey16[5:25, 10:19] = 60000  # a bright bar, 20 high and 9 wide, centred by mass
  Image.fromarray(grey16).save(tmp_path / "deep.png")
  array, done = images.read_image(tmp_path / "deep.png", (28, 28, 3))
  assert done == ["I;16 scaled to 8-bit grey", "L converted to RGB"]
  assert array.shape == (28, 28, 3) and array[..., 0].max() == 255 and array[0, 0, 0] == 0

  with pytest.raises(ValueError, match="the model takes 2 channels; only 1 .grey. or 3 .RGB."):
    images.read_image(tmp_path / "a.png", (28, 28, 2))


def test_predict_command(workdir, tmp_path, data_dir, capsys):
  test = data.load_split("mnist", "test", data_dir, limit=2)
  Image.fromarray(test.images[0, ..., 0]).save(tmp_path / "seven.png")
  Image.fromarray(np.stack([255 - test.images[1, ..., 0]] * 3, -1)).resize((112, 112)).save(
      tmp_path / "two_on_paper.jpg", quality=95)
  (tmp_path / "notes.txt").write_text("not an image")
  files = [tmp_path / "seven.png", tmp_path / "notes.txt", tmp_path, tmp_path / "two_on_paper.jpg"]
  code = cli.main(["predict", "--workdir", str(workdir), *map(str, files), "--reconstruct",
                   str(tmp_path / "out")])
  out, err = capsys.readouterr()
  assert code == 2  # two of the four files failed; the other two were still classified
  assert err.splitlines() == [
      f"capsjax: error: {tmp_path / 'notes.txt'}: not an image PIL can read (PNG, JPEG, BMP, "
      "GIF, TIFF, ...).",
      f"capsjax: error: {tmp_path}: is a directory, expected an image file."]
  records = [json.loads(l) for l in out.splitlines()]
  assert [r["file"] for r in records] == [str(files[0]), str(files[3])]
  assert records[0]["converted"] == []
  assert [step.split(" (")[0] for step in records[1]["converted"]] == [
      "RGB converted to grey", "background estimated from the border", "inverted",
      "cropped to the ink", "centred by its centre of mass in 28x28"]
  assert records[0]["confident"] == bool(capsjax.load(workdir).predict(test.images[:1])
                                         .confident[0])
  expected = capsjax.load(workdir).predict(test.images[:1])
  assert records[0]["class"] == int(expected.classes[0])
  np.testing.assert_allclose(records[0]["scores"], expected.scores[0], atol=2e-6)
  saved = np.asarray(Image.open(tmp_path / "out" / "seven.reconstruction.png"))
  assert saved.shape == (28, 28)
  np.testing.assert_array_equal(
      saved, (np.clip(expected.reconstructions[0, ..., 0], 0, 1) * 255).round().astype(np.uint8))
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "seven.input.png")),
                                test.images[0, ..., 0])


def test_predict_without_checkpoint_is_one_line(tmp_path):
  proc = run_cli("predict", "--workdir", str(tmp_path), "x.png")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"capsjax: error: workdir {str(tmp_path)!r} has no checkpoints/; train into it first.")


def test_tensorboard_log_holds_the_metrics_and_reconstructions(tmp_path, data_dir):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  capsjax.fit("quick", tmp_path, data_dir, progress=False, tensorboard=True, train_examples=64,
              test_examples=16, max_steps=4, batch_size=8, log_every=2, eval_every=2,
              model=TINY)
  events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
  events.Reload()
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  for split, keys in (("train", ("loss", "train_accuracy", "learning_rate", "images_per_sec")),
                      ("test", ("test_accuracy", "test_loss", "test_examples"))):
    for key in keys:
      logged = [(e.step, e.value) for e in events.Scalars(f"{split}/{key}")]
      expected = [(r["step"], r[key]) for r in records if r["split"] == split]
      assert [s for s, _ in logged] == [s for s, _ in expected] == [2, 4]
      np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)
  pictures = events.Images("test/reconstructions")
  assert [p.step for p in pictures] == [2, 4]
  assert (pictures[-1].height, pictures[-1].width) == (2 * 28, 8 * 28)


def test_tensorboard_without_tensorboardx_is_one_line(tmp_path, data_dir, monkeypatch, capsys):
  monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # as if not installed
  code = cli.main(["train", "--workdir", str(tmp_path / "run"), "--data-dir", data_dir,
                   "--tensorboard", "--max-steps", "1"])
  assert code == 2 and not (tmp_path / "run").exists()  # refused before the workdir is made
  assert capsys.readouterr().err.strip() == (
      'capsjax: error: --tensorboard needs tensorboardX: pip install "capsjax[tensorboard]" (or '
      'pip install tensorboardX).')


def test_commands_are_quiet_unless_verbose(workdir, data_dir):
  args = ["eval", "--workdir", str(workdir), "--data-dir", data_dir, "--test-examples", "16",
          "--no-progress"]
  quiet = run_cli(*args)
  assert quiet.returncode == 0 and quiet.stderr == ""
  verbose = run_cli(*args, "--verbose")
  assert verbose.returncode == 0
  if importlib.util.find_spec("cv2") is None:  # TFDS warns on every image decode without OpenCV
    assert "WARNING:absl:OpenCV is not installed" in verbose.stderr
  assert json.loads(quiet.stdout.splitlines()[-1]) == json.loads(verbose.stdout.splitlines()[-1])


def test_eval_batch_size_per_backend():
  assert steps.default_eval_batch_size("gpu") == steps.default_eval_batch_size("tpu") == 500
  assert steps.default_eval_batch_size("cpu") == steps.EVAL_BATCH_SIZE["cpu"]
  assert TrainConfig(max_steps=1).eval_batch_size is None  # resolved per backend at run time
  with pytest.raises(ValueError, match="eval_batch_size must be positive, got 0"):
    TrainConfig(max_steps=1, eval_batch_size=0).validate()
