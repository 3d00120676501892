"""Reading the shipped TFDS MNIST / Fashion-MNIST (array_record) and batching it."""

import numpy as np
import pytest

from capsjax import data

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
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    data.load_split("imagenet", "train", data_dir)


def test_batches_are_deterministic_and_cover_each_epoch(mnist_train):
  n, bs = len(mnist_train), 1000
  epoch0 = np.concatenate([data.batch_indices(n, bs, 7, s) for s in range(60)])
  assert sorted(epoch0.tolist()) == list(range(n))
  epoch1 = data.batch_indices(n, bs, 7, 60)
  assert not np.array_equal(epoch1, epoch0[:bs])  # reshuffled every epoch
  data._epoch_permutation.cache_clear()  # recomputed from (seed, epoch), not served from cache
  np.testing.assert_array_equal(data.batch_indices(n, bs, 7, 0), epoch0[:bs])
  np.testing.assert_array_equal(data.batch_indices(n, bs, 7, 60), epoch1)
  assert not np.array_equal(data.batch_indices(n, bs, 8, 0), epoch0[:bs])  # another seed
  stream = data.train_batches(mnist_train, bs, seed=7, start_step=59)
  images, labels = next(stream)
  np.testing.assert_array_equal(labels, mnist_train.labels[data.batch_indices(n, bs, 7, 59)])
  np.testing.assert_array_equal(next(stream)[1], mnist_train.labels[epoch1])
  with pytest.raises(ValueError, match="larger than the dataset"):
    data.steps_per_epoch(10, 11)


def test_eval_batches_pad_last_batch(mnist_train):
  small = data.Split(mnist_train.images[:25], mnist_train.labels[:25], 10)
  batches = list(data.eval_batches(small, 10))
  assert [b[0].shape[0] for b in batches] == [10, 10, 10]
  assert [int(b[2].sum()) for b in batches] == [10, 10, 5]
  np.testing.assert_array_equal(np.concatenate([b[1][b[2]] for b in batches]), small.labels)
