"""One way of bringing a picture to a network's input size, shared by every reader: the image
folders (`capsjax.data.folder`), TFDS sets of several image sizes (`storage.load_split`) and
`capsjax predict` on a model trained on them (`capsjax.images`), so a picture is resized at
prediction exactly as its kind was for training.

PIL's bilinear filter, which widens its support when shrinking (an antialiased average, not a
point sample), as torchvision's `Resize` does by default.
"""

import numpy as np
from PIL import Image


def parse_size(text: str) -> tuple[int, int]:
  """"HxW" (or "S" for SxS) -> (H, W), both positive integers.

  Raises:
    ValueError: (one line) anything else, the text named.
  """
  parts = str(text).lower().replace(" ", "").split("x")
  if len(parts) == 1:
    parts = parts * 2
  if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f"image size must be HxW with positive integers (e.g. 32x32), got "
                     f"{text!r}.")
  return int(parts[0]), int(parts[1])


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`image` uint8 [h, w, C] (C 1, 3 or 4) resized to `size` = (H, W): uint8 [H, W, C] (the
  same array when it has that size already)."""
  height, width = size
  if image.shape[:2] == (height, width):
    return image
  channels = image.shape[-1]
  picture = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
  return out.reshape(height, width, channels)


def from_picture(picture: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
  """A PIL picture as a network input: made grey (`channels` 1) or RGB (3) by PIL's `convert`
  (alpha dropped), then `resize`d to `size` = (H, W). Returns uint8 [H, W, channels]. What an
  image folder's files go through (`capsjax.data.folder`) and what `capsjax predict` does to a
  picture for a network trained on one."""
  array = np.asarray(picture.convert("L" if channels == 1 else "RGB"))
  return resize(array.reshape(*array.shape[:2], channels), size)
