"""Any TFDS image-classification dataset of the data dir, trained on as
`--dataset tfds:NAME[:VERSION]`.

The dataset's image and class-label features, image size, channels, class count and class names
come from its own metadata (`storage.load_split`, `storage.features_of`); training examples go
through the run's augmentation as MNIST's do (`capsjax.data.augment`), so `tfds:mnist` gives
exactly the batches of `mnist`. Images of several sizes (or any others) are brought to
`--image-size HxW` (`capsjax.data.resize`). A dataset that is not in the data dir is one error
naming the TFDS command that prepares it on a machine with internet: nothing is downloaded.
"""

from capsjax.data import storage
from capsjax.data.dataset import Dataset
from capsjax.data.mnist import builder, loss

PREFIX = "tfds:"


def parse(name: str) -> tuple[str, str | None]:
  """"tfds:NAME[:VERSION]" -> (NAME, VERSION or None).

  Raises:
    ValueError: (one line) another form.
  """
  parts = name[len(PREFIX):].split(":") if name.startswith(PREFIX) else []
  if len(parts) not in (1, 2) or not parts[0] or (len(parts) == 2 and not parts[1]):
    raise ValueError(f"a TFDS dataset is named tfds:NAME or tfds:NAME:VERSION (e.g. "
                     f"tfds:cifar10:3.0.2), got {name!r}.")
  return parts[0], parts[1] if len(parts) == 2 else None


def dataset(name: str, image_size=None) -> Dataset:
  """The `Dataset` of `name` = "tfds:NAME[:VERSION]", its images brought to `image_size`
  (H, W) when given. The data dir is read when a split is loaded, not here.

  Raises:
    ValueError: (one line) a malformed name (`parse`).
  """
  tfds_name, version = parse(name)
  size = None if image_size is None else tuple(image_size)

  def load(split: str, data_dir, limit: int | None) -> storage.Split:
    return storage.load_split(tfds_name, split, data_dir, limit, version=version,
                              image_size=size)

  return Dataset(name=name, description=f"TFDS dataset {tfds_name}"
                 f"{'' if version is None else ' ' + version} from the data dir",
                 splits=("train", "test"), load=load, size=lambda split, stored: len(stored),
                 builder=builder, loss=loss, uses_augmentation=True, options=("image_size",))
