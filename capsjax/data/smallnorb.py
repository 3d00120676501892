"""smallNORB (LeCun, Huang & Bottou 2004) as the official CapsNet code reads it: both stereo
views as the two channels of one image, the 5 object categories as the classes, the 96x96
views brought to 48x48 (Sarasra/models, research/capsules, commit 984fbc7,
`input_data/norb/norb_input_record.py` L63-71, L92, L98).

Read from the TFDS `smallnorb` dataset of the data dir (features `image` and `image2`, the two
views, and `label_category`). The official code resizes with TF 1's `tf.image.resize_images`
(bilinear, `align_corners=False`, and TF 1 had no half-pixel centres): output pixel (i, j)
samples input (2i, 2j) exactly, so the 48x48 image is every second row and column of the 96x96
one, which is what is stored here (24,300 x 48 x 48 x 2 uint8 per split: 112 MB). Training
examples go through the run's preprocessing (`--augmentation smallnorb`: the official
brightness, contrast, 32x32 crop and standardisation; `capsjax.data.augment.norb`).
"""

from capsjax.data import storage
from capsjax.data.dataset import Dataset
from capsjax.data.mnist import builder, loss

SIDE = 48  # the official `image_dim` (L108)
FEATURES = (("image", "image2"), "label_category")


def load(split: str, data_dir, limit: int | None) -> storage.Split:
  """The stored split: uint8 [N, 48, 48, 2] (left and right view), labels 0..4 (the categories,
  named as TFDS names them)."""
  full = storage.load_split("smallnorb", split, data_dir, limit, features=FEATURES)
  step = full.images.shape[1] // SIDE
  return storage.Split(full.images[:, ::step, ::step], full.labels, full.num_classes,
                       full.class_names)


SMALLNORB = Dataset(name="smallnorb", description="smallNORB (TFDS smallnorb): both 96x96 views "
                    "as 2 channels at 48x48, 5 categories, processed by the run's preprocessing "
                    "(the smallnorb preset: the official crop and standardisation)",
                    splits=("train", "test"), load=load, size=lambda split, stored: len(stored),
                    builder=builder, loss=loss, uses_augmentation=True)
