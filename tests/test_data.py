"""Reading the shipped TFDS MNIST / Fashion-MNIST (array_record) and the training batches the
loop draws from it."""

import os
from pathlib import Path

import numpy as np
import pytest

from capsjax import cli, data
from capsjax.data import order, pipeline
from conftest import copy_of_mnist

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist_train(data_dir):
  return data.load_split("mnist", "train", data_dir)


def test_mnist_train_split(mnist_train):
  assert mnist_train.images.shape == (60000, 28, 28, 1)
  assert mnist_train.images.dtype == np.uint8
  assert mnist_train.labels.dtype == np.int32
  assert mnist_train.num_classes == 10
  np.testing.assert_array_equal(np.bincount(mnist_train.labels), MNIST_TRAIN_COUNTS)
  assert 0 < mnist_train.images.mean() < 255 and mnist_train.images.max() == 255


def test_mnist_test_and_fashion_mnist(data_dir):
  test = data.load_split("mnist", "test", data_dir)
  assert test.images.shape == (10000, 28, 28, 1) and len(test) == 10000
  fashion = data.load_split("fashion_mnist", "test", data_dir, limit=500)
  assert fashion.images.shape == (500, 28, 28, 1) and fashion.num_classes == 10


def test_data_dir_from_environment(data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  assert len(data.load_split("mnist", "test", None, limit=10)) == 10


def test_bad_data_dirs(tmp_path, monkeypatch, data_dir):
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  with pytest.raises(ValueError, match="no data dir given"):
    data.load_split("mnist", "train", None)
  with pytest.raises(ValueError, match="does not exist"):
    data.load_split("mnist", "train", tmp_path / "missing")
  with pytest.raises(ValueError, match="is empty"):
    data.load_split("mnist", "train", tmp_path)
  (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
  (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
  with pytest.raises(ValueError, match="not in data dir"):
    data.load_split("mnist", "train", tmp_path)
  with pytest.raises(ValueError, match="dataset 'imagenet' is not in data dir .*tfds build "
                     "imagenet --data_dir"):
    data.load_split("imagenet", "train", data_dir)


@pytest.fixture
def relative(data_dir, tmp_path, monkeypatch) -> tuple[str, Path]:
  """(the data dir relative to tmp_path/here, the current directory now; a directory where
  that relative path names no folder)."""
  elsewhere = tmp_path / "elsewhere" / "deeper"
  elsewhere.mkdir(parents=True)
  (tmp_path / "here").mkdir()
  monkeypatch.chdir(tmp_path / "here")
  return os.path.relpath(data_dir), elsewhere


def test_relative_data_dir_is_resolved_once_to_an_absolute_path(data_dir, tmp_path,
                                                                 monkeypatch, relative):
  relative, elsewhere = relative
  assert not Path(relative).is_absolute()
  path = data.resolve_data_dir(relative)
  assert path.is_absolute() and path.samefile(data_dir)
  monkeypatch.setenv("TFDS_DATA_DIR", relative)
  assert data.resolve_data_dir(None) == path
  # Links made to it from a temporary folder, and reads from another directory, still work.
  linked = tmp_path / "linked"
  copy_of_mnist(str(path), linked)
  monkeypatch.chdir(elsewhere)
  assert len(data.load_split("mnist", "test", path, limit=4)) == 4
  assert len(data.load_split("mnist", "test", linked, limit=4)) == 4


def test_train_reads_a_relative_data_dir_as_one_absolute_path(data_dir, tmp_path, monkeypatch,
                                                              capsys, relative):
  relative, elsewhere = relative
  real_load, seen = data.load_split, []

  def load_from_elsewhere(name, split, given, limit=None):
    monkeypatch.chdir(elsewhere)  # a later read from another directory
    seen.append((given, len(real_load(name, split, given, limit=limit))))
    if len(seen) == 2:  # both splits read: stop before training
      raise KeyboardInterrupt

  monkeypatch.setattr("capsjax.data.storage.load_split", load_from_elsewhere)
  code = cli.main(["train", "--data-dir", relative, "--workdir", str(tmp_path / "w"),
                   "--max-steps", "1", "--batch-size", "8", "--train-examples", "16",
                   "--test-examples", "8", "--no-progress"])
  assert code == 130, capsys.readouterr().err
  assert [n for _, n in seen] == [16, 8]
  assert all(Path(given).is_absolute() and Path(given).samefile(data_dir) for given, _ in seen)


def test_batches_are_deterministic_and_cover_each_epoch(mnist_train):
  n, bs = len(mnist_train), 1000
  epoch0 = np.concatenate([data.batch_indices(n, bs, 7, s) for s in range(60)])
  assert sorted(epoch0.tolist()) == list(range(n))
  epoch1 = data.batch_indices(n, bs, 7, 60)
  assert not np.array_equal(epoch1, epoch0[:bs])  # reshuffled every epoch
  order._epoch_permutation.cache_clear()  # recomputed from (seed, epoch), not served from cache
  np.testing.assert_array_equal(data.batch_indices(n, bs, 7, 0), epoch0[:bs])
  np.testing.assert_array_equal(data.batch_indices(n, bs, 7, 60), epoch1)
  assert not np.array_equal(data.batch_indices(n, bs, 8, 0), epoch0[:bs])  # another seed
  # The loop's chunk of steps 59 and 60 (split on the device, as `capsjax train` keeps MNIST):
  # the last batch of epoch 0, then the first of epoch 1.
  chunk = pipeline.DeviceResident(mnist_train, bs, seed=7, capacity=2).chunk(59, 2)
  labels = np.asarray(chunk.labels)[np.asarray(chunk.indices)]
  np.testing.assert_array_equal(labels[0], mnist_train.labels[data.batch_indices(n, bs, 7, 59)])
  np.testing.assert_array_equal(labels[1], mnist_train.labels[epoch1])
  with pytest.raises(ValueError, match="larger than the dataset"):
    data.steps_per_epoch(10, 11)
