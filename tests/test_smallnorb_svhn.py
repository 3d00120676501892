"""smallNORB and SVHN on the committed TFDS fixtures (tests/fixtures/tfds: the real `smallnorb`
and `svhn_cropped` builders' names, versions and features, synthetic pictures): the two-view
48x48 reading, the official smallNORB preprocessing, and both `*_cpu` presets end to end."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import capsjax
from capsjax import cli
from capsjax.data import datasets, storage
from capsjax.data.augment import norb as recipe
from conftest import records

FIXTURES = str(Path(__file__).parent / "fixtures" / "tfds")
SHORT = ["--max-steps", "3", "--log-every", "3", "--checkpoint-every", "3", "--no-progress"]


def test_smallnorb_is_read_as_the_official_code_reads_it():
  full = storage.load_split("smallnorb", "test", FIXTURES, features=(("image", "image2"),
                                                                     "label_category"))
  stored = datasets.get("smallnorb").load("test", FIXTURES, None)
  assert full.images.shape == (40, 96, 96, 2) and stored.images.shape == (40, 48, 48, 2)
  assert np.array_equal(stored.images, full.images[:, ::2, ::2])  # TF 1's bilinear at 2i, 2j
  assert stored.num_classes == 5 and stored.class_names[0] == "four-legged animals"


def test_the_official_smallnorb_processing():
  images = jax.random.uniform(jax.random.key(0), (8, 48, 48, 2))
  out, _ = recipe.train(jax.random.key(1), images, jnp.zeros(8, jnp.int32))
  assert out.shape == (8, 32, 32, 2)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
  test, _ = recipe.test(images, None)
  window = np.asarray(images[:, 8:40, 8:40]) * 255
  expected = (window - window.mean(axis=(1, 2, 3), keepdims=True)) / \
      window.std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(test, expected, rtol=1e-4, atol=1e-4)


def test_smallnorb_cpu_end_to_end(tmp_path, capsys):
  workdir = tmp_path / "norb"
  assert cli.main(["train", "--config", "smallnorb_cpu", "--data-dir", FIXTURES, "--workdir",
                   str(workdir), *SHORT]) == 0
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["model"]["input_shape"] == [32, 32, 2] and recorded["model"]["num_classes"] == 5
  last = records(workdir, "test")[-1]
  assert last["test_examples"] == 40 and "test_reconstruction_loss" in last
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(workdir), "--data-dir", FIXTURES,
                   "--no-progress"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_accuracy"] == \
      last["test_accuracy"]
  # Two views are no picture file: predict takes them as arrays of the stored shape.
  model = capsjax.load(workdir)
  assert model.picture_shape == (48, 48, 2) and model.input_shape == (32, 32, 2)
  stored = datasets.get("smallnorb").load("test", FIXTURES, None)
  predicted = model.predict(stored.images).classes
  assert np.mean(predicted == stored.labels) == pytest.approx(last["test_accuracy"])
  picture = tmp_path / "photo.png"
  Image.fromarray(np.full((48, 48), 100, np.uint8)).save(picture)
  assert cli.main(["predict", "--workdir", str(workdir), str(picture)]) == 2
  assert "only 1 (grey) or 3 (RGB) can be made from an image" in capsys.readouterr().err


def test_svhn_cpu_end_to_end(tmp_path, capsys):
  workdir = tmp_path / "svhn"
  assert cli.main(["train", "--config", "svhn_cpu", "--data-dir", FIXTURES, "--workdir",
                   str(workdir), *SHORT]) == 0
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["config"]["dataset"] == "tfds:svhn_cropped"
  assert recorded["model"]["input_shape"] == [32, 32, 3]
  assert recorded["model"]["primary_dim"] == 6 and recorded["model"]["digit_dim"] == 8
  assert records(workdir, "test")[-1]["test_examples"] == 48
  picture = tmp_path / "house_number.png"
  Image.fromarray(np.full((40, 30, 3), 60, np.uint8)).save(picture)
  capsys.readouterr()
  assert cli.main(["predict", "--workdir", str(workdir), "--reconstruct",
                   str(tmp_path / "out"), str(picture)]) == 0
  line = json.loads(capsys.readouterr().out.strip())
  assert Path(line["reconstruction"]).is_file()
