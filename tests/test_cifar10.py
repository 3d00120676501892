"""The CIFAR-10 path on the committed TFDS fixture (tests/fixtures/tfds, written by
experiments/fixtures/make_tfds_fixtures.py with the real `cifar10` builder's name, version and
features; synthetic pictures, not CIFAR-10): the official preprocessing, the CapsNet options of
the official runs (SAME padding, no decoder), the `cifar10_cpu` preset end to end, predict, viz
and the ensemble of two runs."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import capsjax
from capsjax import cli
from capsjax.data.augment import cifar10 as recipe
from capsjax.nn import conv
from capsjax.nn.model import CapsNet, count_params
from conftest import records

FIXTURES = str(Path(__file__).parent / "fixtures" / "tfds")
SHORT = ["--max-steps", "6", "--log-every", "3", "--checkpoint-every", "6", "--no-progress"]


def test_the_official_test_processing_is_the_centre_crop_standardised():
  images = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))
  out, labels = recipe.test(images, jnp.arange(3))
  assert out.shape == (3, 24, 24, 3) and labels.tolist() == [0, 1, 2]
  window = np.asarray(images[:, 4:28, 4:28]) * 255.0
  mean = window.mean(axis=(1, 2, 3), keepdims=True)
  std = window.std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(out, (window - mean) / std, rtol=1e-4, atol=1e-4)


def test_the_official_training_processing():
  images = jax.random.uniform(jax.random.key(1), (64, 32, 32, 3))
  out, _ = recipe.train(jax.random.key(2), images, jnp.zeros(64, jnp.int32))
  assert out.shape == (64, 24, 24, 3)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
  again, _ = recipe.train(jax.random.key(2), images, jnp.zeros(64, jnp.int32))
  assert np.array_equal(out, again)  # a pure function of the key
  # One image, many keys: several crops and both flips are drawn.
  one = jnp.broadcast_to(jnp.arange(32 * 32 * 3, dtype=jnp.float32).reshape(32, 32, 3) / 3072,
                         (200, 32, 32, 3))
  drawn, _ = recipe.train(jax.random.key(3), one, jnp.zeros(200, jnp.int32))
  corner = np.asarray(drawn[:, 0, 0, 0])
  assert len(np.unique(corner.round(3))) > 10
  # A brightness shift alone changes nothing after the standardisation (module docstring).
  x = np.asarray(images[0, :24, :24]) * 255
  np.testing.assert_allclose(recipe.standardise(x + 40.0), recipe.standardise(x), atol=1e-4)


def test_same_padding_is_tensorflows():
  x = jax.random.normal(jax.random.key(0), (2, 24, 23, 5))
  kernel = jax.random.normal(jax.random.key(1), (9, 9, 5, 4))
  for stride in (1, 2):
    ours = conv.conv2d(conv.pad_same(x, 9, stride), kernel, jnp.zeros(4), stride, impl="gemm")
    theirs = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_the_official_cifar10_network():
  """SAME padding, 64 primary capsule types on 24x24x3, no decoder: 12x12x64 = 9,216 primary
  capsules and 22,476,288 parameters (the official code's 22,476,448 less its 160 DigitCaps
  biases, a setting of the `official` variant)."""
  net = CapsNet(input_shape=(24, 24, 3), padding="SAME", primary_channels=64,
                reconstruction=False, routing_options={"leaky": True}, rngs=nnx.Rngs(0))
  assert net.primary_grid == (12, 12, 64) and count_params(net) == 22_476_288
  out = net(jnp.zeros((2, 24, 24, 3)))
  assert out.reconstructions is None and out.lengths.shape == (2, 10)
  with pytest.raises(ValueError, match="built without its decoder"):
    net.decode(out.v, jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="padding must be one of VALID, SAME, got 'FULL'"):
    CapsNet(padding="FULL", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
  """Two `cifar10_cpu` runs (seeds 0 and 1) of 6 steps on the fixture, through the CLI."""
  root = tmp_path_factory.mktemp("cifar")
  runs = []
  for seed in (0, 1):
    workdir = root / f"seed{seed}"
    assert cli.main(["train", "--config", "cifar10_cpu", "--data-dir", FIXTURES,
                     "--workdir", str(workdir), "--seed", str(seed), *SHORT]) == 0
    runs.append(workdir)
  return runs


def test_cifar10_cpu_end_to_end(two_runs, capsys):
  workdir = two_runs[0]
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["config"]["dataset"] == "tfds:cifar10"
  assert recorded["model"]["input_shape"] == [24, 24, 3]
  assert recorded["class_names"][:2] == ["airplane", "automobile"]
  last = records(workdir, "test")[-1]
  assert last["test_examples"] == 48 and "test_reconstruction_loss" not in last
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(workdir), "--data-dir", FIXTURES,
                   "--no-progress"]) == 0
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert again["test_accuracy"] == last["test_accuracy"]
  picture = workdir.parent / "photo.png"  # a picture of another size: resized to 32x32
  Image.fromarray(np.full((50, 40, 3), 120, np.uint8)).save(picture)
  assert cli.main(["predict", "--workdir", str(workdir), str(picture)]) == 0
  line = json.loads(capsys.readouterr().out.strip())
  assert line["class_name"] == recorded["class_names"][line["class"]]
  assert line["converted"] == ["resized from 50x40 to 32x32 (HxW)"]
  assert cli.main(["viz", "--workdir", str(workdir), "--data-dir", FIXTURES, "--figures",
                   "samples,routing"]) == 0


def test_the_ensemble_of_two_runs(two_runs, capsys):
  capsys.readouterr()
  assert cli.main(["eval", *(a for w in two_runs for a in ("--workdir", str(w))),
                   "--data-dir", FIXTURES, "--no-progress"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["test_examples"] == 48 and len(result["models"]) == 2
  # Each model's figure is its own evaluation's; the ensemble's is the argmax of the summed
  # scores, recomputed here through the Python API on the stored test images.
  from capsjax.data import storage

  test = storage.load_split("cifar10", "test", FIXTURES)
  total = 0
  for run, model in zip(two_runs, result["models"]):
    assert model["test_accuracy"] == records(run, "test")[-1]["test_accuracy"]
    scores = capsjax.load(run).outputs(test.images).scores
    assert np.mean(np.argmax(scores, -1) == test.labels) == pytest.approx(model["test_accuracy"])
    total = total + scores
  assert result["ensemble_test_accuracy"] == pytest.approx(
      np.mean(np.argmax(total, -1) == test.labels))


def test_ensemble_bad_input(two_runs, tmp_path, capsys, data_dir):
  assert cli.main(["eval", "--workdir", str(two_runs[0]), "--workdir", str(two_runs[1]),
                   "--step", "6", "--no-progress"]) == 2
  assert "an ensemble evaluates each run's newest checkpoint" in capsys.readouterr().err
  mnist = tmp_path / "mnist"
  assert cli.main(["train", "--workdir", str(mnist), "--data-dir", data_dir, "--max-steps", "1",
                   "--batch-size", "8", "--train-examples", "16", "--test-examples", "8",
                   "--model", "conv_channels=16", "--model", "primary_channels=4",
                   "--no-progress"]) == 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(two_runs[0]), "--workdir", str(mnist),
                   "--data-dir", FIXTURES, "--no-progress"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("capsjax: error: the network in") and "takes 28x28x1 inputs" in err
