"""Photos and scans of digits as model inputs: `capsjax.images.read_image`'s steps on synthetic
pictures, `TrainedModel.predict` on paths / PIL images / arrays, `capsjax predict`'s
`confident` key and bad pictures, and benchmarks/photo_predict.py on a tiny run."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

import capsjax
from capsjax import cli, images
from capsjax.api import CONFIDENT_GAP, CONFIDENT_SCORE, Prediction
from conftest import REPO

MNIST = (28, 28, 1)
TINY = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
            decoder_hidden=[32, 64])


def figure(size=(100, 80), box=(30, 20, 60, 70), width=7) -> np.ndarray:
  """Float [H, W] ink coverage in [0, 1]: a thick "0" (an ellipse outline) inside `box`."""
  canvas = Image.new("L", size, 0)
  ImageDraw.Draw(canvas).ellipse(box, outline=255, width=width)
  return np.asarray(canvas, np.float64) / 255


def on_paper(cover, paper, ink, noise=0.0, seed=0) -> np.ndarray:
  """uint8 [H, W]: ink of reflectance `ink` on paper lit as `paper` (a level or an [H, W] map)."""
  paper = np.broadcast_to(np.asarray(paper, np.float64), cover.shape)
  values = paper * (1 - cover) + paper * ink * cover
  values = values + np.random.default_rng(seed).normal(0, noise, values.shape)
  return np.clip(values.round(), 0, 255).astype(np.uint8)


def extent(array) -> tuple[int, int]:
  """(height, width) of the pixels >= 25% of the maximum."""
  mask = array[..., 0] >= 0.25 * array.max()
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_dark_ink_on_light_paper_is_inverted_by_the_border_rule():
  # A fat dark figure covering most of the picture: the global mean is dark (< 127.5), which
  # the old rule took for light ink on black; the border (paper) is lighter than the ink.
  cover = figure((60, 60), (4, 4, 55, 55), width=16)
  picture = on_paper(cover, 220, 0.0)
  assert picture.mean() < 127.5
  array, done = images.read_image(picture, MNIST)
  assert done[:2] == ["background estimated from the border (grey 220) and divided out",
                      "inverted (dark ink on a lighter background)"]
  assert array[14, 7, 0] == 255 and array[0, 0, 0] == 0 and array[14, 14, 0] < 20  # ring, hole
  # The same figure light on a dark ground is left the right way round, even where it covers
  # most of the picture (a global mean above 127.5, which the old rule inverted).
  picture = on_paper(cover, 20, 12.0)
  assert picture.mean() > 127.5
  array, done = images.read_image(picture, MNIST)
  assert done[0] == "background estimated from the border (grey 20) and subtracted"
  assert not any(step.startswith("inverted") for step in done)
  assert array[14, 7, 0] == 255 and array[0, 0, 0] == 0


def test_dim_uneven_background_is_removed_and_the_contrast_stretched():
  cover = figure((100, 80), (20, 15, 80, 65), width=6)
  y, x = np.mgrid[0:80, 0:100]
  paper = 50 + 100 * x / 99 - 15 * ((y - 40) / 40) ** 2  # dim, from 35 (left) to 150 (right)
  picture = on_paper(cover, paper, 0.3, noise=2.0)
  array, done = images.read_image(picture, MNIST)
  assert done[0].startswith("background estimated from the border (grey 3")
  assert "uneven) and divided out" in done[0]
  assert done[1] == "inverted (dark ink on a lighter background)"
  assert done[2].startswith("contrast stretched (ink ") and done[2].endswith("made 0..255)")
  assert array.max() == 255
  # The stroke is as bright where the paper was dim (left) as where it was bright (right).
  left, right = array[:, :14, 0], array[:, 14:, 0]
  assert abs(np.percentile(left[left > 0], 90) - np.percentile(right[right > 0], 90)) < 30
  # Everything two pixels off the stroke is 0: the background and its noise are gone.
  near = ndimage.binary_dilation(array[..., 0] >= 64, iterations=2)
  assert np.all(array[~near, 0] == 0) and (~near).sum() > 300


def test_low_contrast_light_ink_is_stretched():
  picture = on_paper(figure(), 100, 1.3)  # light ink, only 30 grey levels above its ground
  array, done = images.read_image(picture, MNIST)
  assert done[0] == "background estimated from the border (grey 100) and subtracted"
  assert done[1] == "contrast stretched (ink 0..30 of 255 made 0..255)"
  assert array.max() == 255 and array[0, 0, 0] == 0


def test_figure_is_scaled_to_the_box_and_centred_by_its_centre_of_mass():
  # An off-centre "0" 50 high and 30 wide in a 100x80 (W x H) picture; a blob to one side moves
  # the centre of mass away from the middle of the box.
  cover = figure((100, 80), (5, 10, 35, 60), width=5)
  cover[30:40, 28:36] = 1.0
  array, done = images.read_image((cover * 255).round().astype(np.uint8), MNIST)
  assert done == ["cropped to the ink (31x51 of 100x80 pixels) and scaled by 0.392 to fit a "
                  "20x20 box (aspect ratio kept, anti-aliased)",
                  "centred by its centre of mass in 28x28"]
  height, width = extent(array)
  # Aspect ratio kept: 51 x 31 -> 20 x 12 (+-1: the edges fall between pixels, as MNIST's).
  assert abs(height - 20) <= 1 and abs(width - 12) <= 1
  cy, cx = ndimage.center_of_mass(array[..., 0].astype(float))
  assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # where MNIST's digits have theirs
  # An MNIST-style 28x28 digit already in its 20x20 box, centred, is returned untouched.
  again, steps = images.read_image(array, MNIST)
  assert steps == [] and np.array_equal(again, array)
  # The same digit off centre in 28x28 is moved back, not rescaled.
  moved, steps = images.read_image(np.roll(array, (3, -2), (0, 1)), MNIST)
  assert steps == ["moved by (2, -3) pixels to put its centre of mass at the centre"]
  assert np.array_equal(moved, array)


def test_other_input_shapes():
  cover = figure()
  picture = on_paper(cover, 230, 0.1)
  # A 40x40 network of MNIST digits (affNIST-style) keeps MNIST's 20-pixel box, centred.
  array, _ = images.read_image(picture, (40, 40, 1), dataset="expanded_mnist")
  assert array.shape == (40, 40, 1) and abs(extent(array)[0] - 20) <= 1
  cy, cx = ndimage.center_of_mass(array[..., 0].astype(float))
  assert abs(cy - 20) <= 0.5 and abs(cx - 20) <= 0.5
  # Fashion-MNIST's items fill the whole 28x28, centred by their box.
  array, done = images.read_image(picture, MNIST, dataset="fashion_mnist")
  assert extent(array)[0] >= 27 and done[-1] == "centred by the middle of its box in 28x28"
  # A 3-channel network: blue ink on cream paper, every channel made light on black.
  colour = np.stack([on_paper(cover, p, i) for p, i in ((240, 0.2), (225, 0.25), (190, 0.6))],
                    -1)
  array, done = images.read_image(colour, (28, 28, 3))
  assert array.shape == (28, 28, 3)
  assert not any(step.startswith(("RGB converted", "L converted")) for step in done)
  assert np.all(array[0, 0] == 0) and np.all(array.reshape(-1, 3).max(0) == 255)
  grey, done = images.read_image(picture, (28, 28, 3))
  assert done[0] == "L converted to RGB" and np.array_equal(grey[..., 0], grey[..., 2])


def test_bad_pictures_are_refused_with_their_name(tmp_path):
  with pytest.raises(ValueError, match=r"^image: blank picture: every pixel is grey level 0; "):
    images.read_image(np.zeros((28, 28), np.uint8), MNIST)
  with pytest.raises(ValueError, match=r"^card: blank picture: every pixel is colour "
                                       r"\(200, 30, 30\); nothing to classify\.$"):
    images.read_image(np.full((50, 50, 3), (200, 30, 30), np.uint8), MNIST, name="card")
  noise = on_paper(np.zeros((64, 64)), 180, 1.0, noise=4.0)
  with pytest.raises(ValueError, match=r"^image: no figure stands out from the background "
                                       r"\(no ink stronger than the noise of its border\); "
                                       r"expected one digit on its paper\.$"):
    images.read_image(noise, MNIST)
  Image.fromarray(on_paper(figure((8, 8), (1, 1, 6, 6), 1), 230, 0.1)).save(tmp_path / "tiny.png")
  with pytest.raises(ValueError, match=r"tiny.png: the picture is 8x8 pixels, too small: a 28x28 "
                                       r"model needs at least 10x10 \(its figures fill a 20x20 "
                                       r"box\)\.$"):
    images.read_image(tmp_path / "tiny.png", MNIST)
  with pytest.raises(ValueError, match=r"missing.png: no such file\.$"):
    images.read_image(tmp_path / "missing.png", MNIST)
  with pytest.raises(ValueError, match=r"^image: float pictures must lie in \[0, 1\], got values "
                                       r"from 0 to 3\.$"):
    images.read_image(np.linspace(0, 3, 900).reshape(30, 30), MNIST)
  with pytest.raises(ValueError, match=r"pictures must be uint8 \(0..255\) or floating point in "
                                       r"\[0, 1\], got dtype int32"):
    images.read_image(np.ones((30, 30), np.int32), MNIST)
  with pytest.raises(ValueError, match=r"a picture array must be .* got shape \(30, 30, 2\)"):
    images.read_image(np.ones((30, 30, 2), np.uint8), MNIST)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
  """A tiny CapsNet trained for 10 steps through `capsjax.fit`."""
  path = tmp_path_factory.mktemp("photos")
  capsjax.fit("quick", path, data_dir, progress=False, train_examples=256, test_examples=32,
              max_steps=10, batch_size=16, log_every=10, model=TINY)
  return path


def test_predict_takes_paths_pil_images_and_arrays_of_any_size(workdir, tmp_path,
                                                                monkeypatch):
  model = capsjax.load(workdir, batch_size=8)
  grey = on_paper(figure(), 220, 0.15, noise=2.0)
  rgb = np.stack([grey, grey, (grey * 0.8).astype(np.uint8)], -1)
  Image.fromarray(grey).save(tmp_path / "grey.png")
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  expected = model.predict(np.stack([model.read_image(tmp_path / "grey.png")[0],
                                     model.read_image(tmp_path / "rgb.png")[0]]))
  for source, row in ((tmp_path / "grey.png", 0), (str(tmp_path / "rgb.png"), 1),
                      (Image.open(tmp_path / "grey.png"), 0), (grey, 0), (rgb, 1),
                      (grey.astype(np.float32) / 255, 0), (grey[..., None], 0)):
    pred = model.predict(source)
    assert pred.scores.shape == (1, 10)
    np.testing.assert_allclose(pred.scores[0], expected.scores[row], atol=1e-5)
  mixed = model.predict([tmp_path / "grey.png", Image.fromarray(rgb), grey])
  np.testing.assert_allclose(mixed.scores, expected.scores[[0, 1, 0]], atol=1e-5)
  assert model.outputs(tmp_path / "grey.png").scores.shape == (1, 10)
  # Arrays already of the model's shape are used as they are (no conversion).
  batch = np.roll(model.read_image(grey)[0], 5, 1)[None]
  with monkeypatch.context() as m:
    m.setattr(images, "read_image", lambda *a, **k: pytest.fail("converted"))
    np.testing.assert_allclose(model.predict(batch).scores, model.predict(batch[0]).scores)
    np.testing.assert_allclose(model.predict(batch).scores,
                               model.outputs(batch.astype(np.float32) / 255).scores, atol=1e-6)
  # Bad pictures: each named in one ValueError.
  with pytest.raises(ValueError, match=rf"^2 of 3 pictures cannot be classified: "
                                       rf"{tmp_path / 'nope.png'}: no such file\. image 2: blank "
                                       rf"picture: every pixel is grey level 9; nothing to "
                                       rf"classify\.$"):
    model.predict([tmp_path / "grey.png", tmp_path / "nope.png", np.full((40, 40), 9, np.uint8)])
  with pytest.raises(ValueError, match=r"^image: the picture is 6x6 pixels, too small"):
    model.predict(np.zeros((6, 6, 3), np.uint8))
  with pytest.raises(ValueError, match=r"images of shape \(5, 784\) look like a batch of "
                                       r"flattened images; reshape them to \[B, 28, 28, 1\]\."):
    model.predict(np.zeros((5, 784), np.uint8))


def test_confident_flag():
  scores = np.array([[0.95, 0.05, 0.2], [0.45, 0.01, 0.0], [0.9, 0.6, 0.0], [0.8, 0.29, 0.1]])
  pred = Prediction(scores.argmax(-1), scores, None, None)
  assert (CONFIDENT_SCORE, CONFIDENT_GAP) == (0.5, 0.5)
  assert pred.confident.tolist() == [True, False, False, True]


def test_predict_command_reports_confident_and_bad_pictures(workdir, tmp_path, capsys):
  Image.fromarray(on_paper(figure(), 210, 0.2, noise=3.0)).save(tmp_path / "photo.jpg")
  Image.fromarray(np.full((64, 64), 250, np.uint8)).save(tmp_path / "blank.png")
  Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(tmp_path / "small.png")
  files = [tmp_path / "photo.jpg", tmp_path / "blank.png", tmp_path / "missing.png",
           tmp_path / "small.png", tmp_path / "photo.jpg"]
  code = cli.main(["predict", "--workdir", str(workdir), *map(str, files)])
  out, err = capsys.readouterr()
  assert code == 2
  assert err.splitlines() == [
      f"capsjax: error: {tmp_path / 'blank.png'}: blank picture: every pixel is grey level 250; "
      "nothing to classify.",
      f"capsjax: error: {tmp_path / 'missing.png'}: no such file.",
      f"capsjax: error: {tmp_path / 'small.png'}: the picture is 7x5 pixels, too small: a 28x28 "
      "model needs at least 10x10 (its figures fill a 20x20 box)."]
  records = [json.loads(line) for line in out.splitlines()]
  assert [r["file"] for r in records] == [str(files[0]), str(files[4])]
  model = capsjax.load(workdir)
  expected = model.predict(tmp_path / "photo.jpg")
  for r in records:
    assert list(r) == ["file", "class", "class_name", "scores", "confident", "converted", "step"]
    assert r["confident"] == bool(expected.confident[0]) and r["class"] == expected.classes[0]
    assert r["converted"] == model.read_image(tmp_path / "photo.jpg")[1]
    assert r["converted"][:2] == ["background estimated from the border (grey 210) and divided "
                                  "out", "inverted (dark ink on a lighter background)"]


def test_photo_benchmark_runs(workdir, data_dir, tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("photo_predict",
                                                REPO / "benchmarks" / "photo_predict.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(["--workdir", str(workdir), "--data-dir", data_dir, "--examples", "10", "--out",
              str(tmp_path / "files"), "--figure", str(tmp_path / "sheet.png")])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["examples"] == 10 and result["clean_predict"]["steps"] == {}
  assert result["clean_predict"]["accuracy"] == result["clean_arrays"]["accuracy"]
  assert result["photo_predict"]["steps"]["cropped to the ink"] == 10
  assert len(list((tmp_path / "files").glob("photo_*"))) == 10
  assert Image.open(tmp_path / "sheet.png").size == (8 * 118 + 6, 2 * 118 + 6 + 16)
