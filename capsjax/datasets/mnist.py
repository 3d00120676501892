"""MNIST and Fashion-MNIST as stored in a TFDS data_dir, with the paper's random shift (§5)."""

from capsjax import augment, data
from capsjax.datasets.base import Dataset, gather


def tfds_loader(name: str):
  """The `Dataset.load` of TFDS dataset `name`: `data.load_split(name, split, data_dir, limit)`,
  the stored split (its first `limit` examples) in memory."""

  def load(split: str, data_dir, limit: int | None) -> data.Split:
    return data.load_split(name, split, data_dir, limit=limit)

  return load


# The stored MNIST digits: what every MNIST-built set (expanded MNIST, MultiMNIST, affNIST-style)
# loads and builds its examples from.
load_mnist = tfds_loader("mnist")


def examples(config, split: str, stored: data.Split):
  """Training: rows shifted by up to `config.max_shift` px (zero fill); test: the rows."""
  del stored
  return gather(augment.shift_transform(config.max_shift) if split == "train" else None)


def loss(arch, config):
  return arch.loss(config)


def _size(split: str, stored: data.Split) -> int:
  return len(stored)


MNIST = Dataset(name="mnist", description="MNIST, 28x28 (TFDS mnist), shifted by up to "
                "max_shift px when training", splits=("train", "test"), load=load_mnist,
                size=_size, examples=examples, loss=loss)
FASHION_MNIST = Dataset(name="fashion_mnist", description="Fashion-MNIST, 28x28 (TFDS "
                        "fashion_mnist), shifted like MNIST", splits=("train", "test"),
                        load=tfds_loader("fashion_mnist"), size=_size, examples=examples, loss=loss)
