"""MNIST and Fashion-MNIST as stored in a TFDS data_dir, trained with the run's augmentation
(`TrainConfig.augmentation`: the paper's random shift, §5, by default)."""

from capsjax.data import augment, storage
from capsjax.data.dataset import Dataset, gather


def tfds_loader(name: str):
  """The `Dataset.load` of TFDS dataset `name`: `storage.load_split(name, split, data_dir, limit)`,
  the stored split (its first `limit` examples) in memory."""

  def load(split: str, data_dir, limit: int | None) -> storage.Split:
    return storage.load_split(name, split, data_dir, limit=limit)

  return load


# The stored MNIST digits: what every MNIST-built set (expanded MNIST, MultiMNIST, affNIST-style)
# loads and builds its examples from.
load_mnist = tfds_loader("mnist")


def builder(config, split: str, stored: storage.Split):
  """The `Dataset.builder` of MNIST, Fashion-MNIST and every stored single-label set (tfds:,
  folder:, arrays:): training rows through the run's preprocessing (`augment.preprocessing`;
  by default shifted by up to `config.max_shift` px in each direction, zero fill, the paper's
  §5); test rows through its test half (by default unchanged). `stored` is not needed."""
  del stored
  recipe = augment.preprocessing(config)
  return gather(recipe.train) if split == "train" else gather(test=recipe.test)


def loss(arch, config):
  """The `Dataset.loss` of a single-label set: the network's own objective, `arch.loss(config)`
  (CapsNet: margin loss, Eq. 4, + reconstruction loss, §4.1; baseline: cross-entropy)."""
  return arch.loss(config)


def _size(split: str, stored: storage.Split) -> int:
  return len(stored)


MNIST = Dataset(name="mnist", description="MNIST, 28x28 (TFDS mnist), augmented when training "
                "(default: shifted by up to max_shift px)", splits=("train", "test"),
                load=load_mnist, size=_size, builder=builder, loss=loss, uses_augmentation=True)
FASHION_MNIST = Dataset(name="fashion_mnist", description="Fashion-MNIST, 28x28 (TFDS "
                        "fashion_mnist), augmented like MNIST", splits=("train", "test"),
                        load=tfds_loader("fashion_mnist"), size=_size, builder=builder, loss=loss,
                        uses_augmentation=True)
