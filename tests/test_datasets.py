"""The datasets the loop trains and evaluates on (capsjax/data): expanded MNIST, the
affNIST-style warps, the affNIST `.mat` reader, MultiMNIST through the loop, and the commands
that evaluate a checkpoint on another test set, with their bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import io as sio

from capsjax import cli, data
from capsjax.data import affnist, datasets, expanded_mnist, multimnist
from capsjax.data import multimnist as multimnist_dataset
from capsjax.train.config import TrainConfig
from conftest import TINY_MODEL_ARGS, run_cli

CONFIG = TrainConfig(max_steps=1)


def _digits(n=64, seed=0):
  """n MNIST-like digits: uint8 [n, 28, 28, 1] with ink in the central 20x20, labels."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 28, 28, 1), np.uint8)
  images[:, 4:24, 4:24, 0] = rng.integers(0, 256, (n, 20, 20)) * (rng.random((n, 20, 20)) < 0.3)
  return images, (np.arange(n) % 10).astype(np.int32)


def test_registry_names_and_splits():
  assert datasets.available("train") == ["mnist", "fashion_mnist", "multimnist",
                                         "expanded_mnist", "smallnorb"]
  assert datasets.available("test") == ["mnist", "fashion_mnist", "multimnist", "expanded_mnist",
                                        "smallnorb", "affnist_style", "affnist"]
  with pytest.raises(ValueError, match="unknown dataset 'cifar'; expected one of mnist"):
    datasets.get("cifar")
  with pytest.raises(ValueError, match="'affnist' has no train split"):
    datasets.get("affnist", "train")


def test_subset_spreads_evenly_and_refuses_more_than_the_set():
  np.testing.assert_array_equal(datasets.subset(10_000_000, 10_000)[:3], [0, 1000, 2000])
  assert len(set(datasets.subset(320_000, 10_000) // 32)) == 10_000  # every digit once
  np.testing.assert_array_equal(datasets.subset(5, None), np.arange(5))
  with pytest.raises(ValueError, match="--test-examples 11 is more than the 10 examples"):
    datasets.subset(10, 11, "x")


def test_expanded_mnist_shifts_within_six_and_keeps_the_digit():
  images, labels = _digits()
  stored = data.Split(images, labels, 10)
  train = jax.jit(expanded_mnist.builder(CONFIG, "train", stored))
  test = jax.jit(expanded_mnist.builder(CONFIG, "test", stored))
  index = jnp.arange(64)
  x, y = train(jax.random.key(3), images, labels, index)
  assert x.shape == (64, 40, 40, 1) and np.array_equal(y, labels)
  _, shifts = expanded_mnist.translate(jax.random.key(3), images.astype(np.float32) / 255)
  shifts = np.asarray(shifts)
  assert shifts.min() == -6 and shifts.max() == 6
  for i in range(64):  # the digit, moved by its shift, nothing lost
    dy, dx = shifts[i]
    np.testing.assert_allclose(x[i, 6 + dy:34 + dy, 6 + dx:34 + dx], images[i] / 255, atol=1e-6)
  centred, _ = test(None, images, labels, index)
  np.testing.assert_allclose(centred[:, 6:34, 6:34], images / 255, atol=1e-6)


def test_affine_warps_keep_the_digit_inside_and_span_their_ranges():
  images, _ = _digits(400)
  keys = jax.random.split(jax.random.key(1), 400)
  w = jax.jit(jax.vmap(affnist.warp))(keys, images.astype(np.float32) / 255)
  for name, values in (("rotation_deg", w.rotation_deg), ("shear", w.shear),
                       ("scale_y", w.scale[:, 0]), ("scale_x", w.scale[:, 1])):
    lo, hi = affnist.RANGES[name]
    values = np.asarray(values)
    assert lo <= values.min() < lo + 0.1 * (hi - lo) and hi - 0.1 * (hi - lo) < values.max() <= hi
  # Nothing is cut off: on a 120x120 canvas, where no digit can reach an edge, the same
  # transformations (the sampling grid moves by a whole 40 px) give the same ink.
  big = jax.jit(jax.vmap(lambda k, d: affnist.warp(k, d, canvas=120)))(
      keys, images.astype(np.float32) / 255)
  np.testing.assert_allclose(np.asarray(w.image).sum((1, 2, 3)),
                             np.asarray(big.image).sum((1, 2, 3)), rtol=1e-4)
  # and the ink scales with the map's determinant (the scales; rotation and shear keep area).
  ink = np.asarray(w.image).sum((1, 2, 3)) / (images / 255).sum((1, 2, 3))
  np.testing.assert_allclose(ink / np.asarray(w.scale).prod(1), 1, atol=0.05)
  assert np.asarray(w.translation).min() < -8 and np.asarray(w.translation).max() > 8
  # The same (key, digit) gives the same example; the set is a function of the index.
  again = jax.vmap(affnist.warp)(keys[:5], images[:5].astype(np.float32) / 255)
  np.testing.assert_array_equal(again.image, w.image[:5])


def test_affnist_style_set_is_fixed_and_32_per_digit():
  images, labels = _digits(20)
  stored = data.Split(images, labels, 10)
  ds = datasets.get("affnist_style")
  assert ds.size("test", stored) == 640
  fn = jax.jit(ds.builder(CONFIG, "test", stored))
  x, y = fn(None, images, labels, jnp.array([0, 31, 32, 639]))
  assert x.shape == (4, 40, 40, 1) and list(y) == [labels[0], labels[0], labels[1], labels[19]]
  x2, _ = fn(None, images, labels, jnp.array([0, 31, 32, 639]))
  np.testing.assert_array_equal(x, x2)
  assert not np.allclose(x[0], x[1])  # two transformations of one digit


def _write_mat(path, images, labels, **fields):
  """An affNIST .mat file in the published layout: affNISTdata.image [1600, N] (one image per
  column, row-major), label_int [1, N]."""
  record = {"image": images.reshape(len(images), -1).T, "label_int": labels[None, :],
            "label_one_of_n": np.eye(10, dtype=np.uint8)[labels].T, **fields}
  sio.savemat(str(path), {"affNISTdata": record})


def test_affnist_mat_reader_round_trip_and_bad_files(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 40, 40, 1)).astype(np.uint8)
  labels = rng.integers(0, 10, 7).astype(np.int32)
  _write_mat(tmp_path / "test.mat", images, labels)
  got_images, got_labels = affnist.read_mat(tmp_path / "test.mat")
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)
  with pytest.raises(ValueError, match="does not exist"):
    affnist.read_mat(tmp_path / "missing.mat")
  (tmp_path / "junk.mat").write_bytes(b"not a mat file")
  with pytest.raises(ValueError, match="could not read .* as a MATLAB file"):
    affnist.read_mat(tmp_path / "junk.mat")
  sio.savemat(str(tmp_path / "other.mat"), {"mnist": np.zeros(3)})
  with pytest.raises(ValueError, match="no variable 'affNISTdata' \\(found: mnist\\)"):
    affnist.read_mat(tmp_path / "other.mat")
  sio.savemat(str(tmp_path / "small.mat"), {"affNISTdata": {
      "image": np.zeros((784, 3), np.uint8), "label_int": np.zeros((1, 3), np.uint8)}})
  with pytest.raises(ValueError, match=r"image has shape \(784, 3\).*expected image \[1600, N\]"):
    affnist.read_mat(tmp_path / "small.mat")


@pytest.fixture(scope="module")
def expanded_run(tmp_path_factory, data_dir):
  """A tiny CapsNet trained 2 steps on expanded MNIST (40x40)."""
  workdir = tmp_path_factory.mktemp("expanded") / "run"
  done = run_cli("train", "--config", "affnist_cpu", "--data-dir", data_dir, "--workdir",
                 str(workdir), "--max-steps", "2", "--checkpoint-every", "1", "--batch-size", "8",
                 "--train-examples", "256", "--test-examples", "16", "--no-progress",
                 *TINY_MODEL_ARGS)
  assert done.returncode == 0, done.stderr
  return workdir


def test_expanded_mnist_run_evaluates_on_affnist_sets(expanded_run, data_dir, tmp_path):
  stored = json.loads((expanded_run / "config.json").read_text())
  assert stored["config"]["dataset"] == "expanded_mnist"
  assert stored["model"]["input_shape"] == [40, 40, 1]
  style = run_cli("eval", "--workdir", str(expanded_run), "--data-dir", data_dir, "--dataset",
                  "affnist_style", "--test-examples", "40", "--no-progress")
  assert style.returncode == 0, style.stderr
  record = json.loads(style.stdout.strip().splitlines()[-1])
  assert record["dataset"] == "affnist_style" and record["test_examples"] == 40
  assert record["step"] == 2 and 0 <= record["test_accuracy"] <= 1
  earlier = run_cli("eval", "--workdir", str(expanded_run), "--data-dir", data_dir, "--dataset",
                    "affnist_style", "--test-examples", "40", "--step", "1", "--no-progress")
  assert earlier.returncode == 0, earlier.stderr
  assert json.loads(earlier.stdout.strip().splitlines()[-1])["step"] == 1
  # The real affNIST reader through the command: a data dir with MNIST and affnist/test.mat.
  root = tmp_path / "data"
  root.mkdir()
  (root / "mnist").symlink_to(f"{data_dir}/mnist")
  (root / "affnist").mkdir()
  images, labels = _digits(12)
  canvas = np.zeros((12, 40, 40, 1), np.uint8)
  canvas[:, 6:34, 6:34] = images
  _write_mat(root / "affnist" / "test.mat", canvas, labels)
  real = run_cli("eval", "--workdir", str(expanded_run), "--data-dir", str(root), "--dataset",
                 "affnist", "--no-progress")
  assert real.returncode == 0, real.stderr
  record = json.loads(real.stdout.strip().splitlines()[-1])
  assert record["dataset"] == "affnist" and record["test_examples"] == 12


def test_expanded_run_draws_samples_and_affnist_figures(expanded_run, data_dir, tmp_path):
  code = cli.main(["viz", "--workdir", str(expanded_run), "--data-dir", data_dir, "--out",
                   str(tmp_path), "--figures", "samples,affnist", "--no-progress"])
  assert code == 0
  for name in ("samples", "affnist"):
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


BAD_EVAL = {
    "unknown dataset": (["--dataset", "svhn"], "unknown dataset 'svhn'; expected one of"),
    "other input size": (["--dataset", "mnist"],
                         "takes 40x40x1 inputs (trained on expanded_mnist); dataset 'mnist' "
                         "gives 28x28x1"),
    "too many examples": (["--dataset", "affnist_style", "--test-examples", "320001"],
                          "--test-examples 320001 is more than the 320,000 examples"),
    "no affnist files": (["--dataset", "affnist"], "the affNIST test set is not in"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVAL))
def test_bad_eval_input_gives_one_line(case, expanded_run, data_dir, capsys):
  extra, message = BAD_EVAL[case]
  code = cli.main(["eval", "--workdir", str(expanded_run), "--data-dir", data_dir,
                   "--no-progress", *extra])
  assert code == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_multimnist_through_the_loop_matches_the_generator(tmp_path, data_dir):
  """3 steps of a tiny CapsNet on MultiMNIST, resumed from step 2, equal the uninterrupted run;
  the training pairs are the generator's pairs of the run's seed."""
  common = ["--config", "multimnist_cpu", "--data-dir", data_dir, "--batch-size", "4",
            "--train-examples", "200", "--test-examples", "24", "--log-every", "1",
            "--no-progress", *TINY_MODEL_ARGS]
  whole = run_cli("train", *common, "--workdir", str(tmp_path / "a"), "--max-steps", "3")
  assert whole.returncode == 0, whole.stderr
  first = run_cli("train", *common, "--workdir", str(tmp_path / "b"), "--max-steps", "2")
  assert first.returncode == 0, first.stderr
  resumed = run_cli("train", *common, "--workdir", str(tmp_path / "b"), "--max-steps", "3")
  assert resumed.returncode == 0, resumed.stderr
  a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (whole, resumed))
  assert a["test_examples"] == b["test_examples"] == 24
  for key in ("test_loss", "test_accuracy", "test_one_correct"):
    assert a[key] == pytest.approx(b[key], rel=1e-5), key
  stored = json.loads((tmp_path / "a" / "config.json").read_text())
  assert stored["model"]["input_shape"] == [36, 36, 1]
  wrong = run_cli("eval", "--workdir", str(tmp_path / "a"), "--data-dir", data_dir,
                  "--dataset", "mnist")
  assert wrong.returncode == 2
  assert wrong.stderr.strip().splitlines()[-1] == (
      f"capsjax: error: the checkpoint in {str(tmp_path / 'a')!r} takes 36x36x1 inputs (trained "
      "on multimnist); dataset 'mnist' gives 28x28x1. Evaluate it on a dataset of its input size.")
  # The dataset's training examples are `multimnist.pairing`'s pairs of the seed's key.
  mnist = data.load_split("mnist", "train", data_dir, limit=200)
  ds = datasets.get("multimnist")
  x, (labels, digits) = ds.builder(TrainConfig(max_steps=1), "train", mnist)(
      None, mnist.images, mnist.labels, jnp.array([0, 199_999]))
  pair = multimnist.pairing(mnist.labels)
  key = multimnist_dataset.pair_key(0, "train")
  p = pair(key, jnp.int32(199_999), jnp.asarray(mnist.images))
  np.testing.assert_array_equal(x[1], p.image)
  np.testing.assert_array_equal(labels[1], p.labels)
  assert labels[1, 0] != labels[1, 1]
