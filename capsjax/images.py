"""Image files (PNG, JPEG, ...) as model inputs, for `capsjax predict`.

Each file is converted to the model's input shape, and every conversion is reported:
colour to grey (or grey to colour), transparency flattened onto black, resized to H x W, and
inverted when the picture is a dark figure on a light background (MNIST digits are light on
black, photos and scans of handwriting are usually the reverse).
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_READABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F")


def read_image(path: str | Path, input_shape: tuple[int, int, int]
               ) -> tuple[np.ndarray, list[str]]:
  """The file at `path` as uint8 [H, W, C] for a model with `input_shape`, and what was done.

  Raises ValueError (one line naming the file) for a directory, a missing or unreadable file,
  something that is not an image, or an image whose bands cannot become C channels.
  """
  path = Path(path)
  height, width, channels = input_shape
  if path.is_dir():
    raise ValueError(f"{path}: is a directory, expected an image file.")
  if not path.exists():
    raise ValueError(f"{path}: no such file.")
  try:
    with Image.open(path) as opened:
      opened.load()
      image = opened.copy()
  except UnidentifiedImageError:
    raise ValueError(f"{path}: not an image PIL can read (PNG, JPEG, BMP, GIF, TIFF, ...).") \
        from None
  except OSError as e:
    raise ValueError(f"{path}: unreadable image ({e}).") from None
  done = []
  mode = image.mode
  if mode not in _READABLE_MODES:
    raise ValueError(f"{path}: image mode {mode!r} cannot be converted to {channels} "
                     "channel(s).")
  if mode in ("I", "I;16", "F"):  # 16/32-bit grey: scale to 0..255
    values = np.asarray(image, np.float64)
    span = values.max() - values.min()
    values = (values - values.min()) / (span if span else 1.0) * 255
    image = Image.fromarray(values.round().astype(np.uint8), "L")
    done.append(f"{mode} scaled to 8-bit grey")
  elif mode in ("LA", "PA", "RGBA", "P") and (mode != "P" or "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    image = Image.alpha_composite(background, rgba).convert("RGB" if channels == 3 else "L")
    done.append("transparency flattened onto black")
  target = "L" if channels == 1 else "RGB" if channels == 3 else None
  if target is None:
    raise ValueError(f"{path}: the model takes {channels} channels; only 1 (grey) or 3 (RGB) "
                     "can be made from an image file.")
  if image.mode != target:
    done.append(f"{image.mode} converted to {'grey' if target == 'L' else 'RGB'}")
    image = image.convert(target)
  if image.size != (width, height):
    done.append(f"resized from {image.size[0]}x{image.size[1]} to {width}x{height}")
    image = image.resize((width, height), Image.Resampling.LANCZOS)
  array = np.asarray(image, np.uint8).reshape(height, width, channels)
  if array.mean() > 127.5:
    array = 255 - array
    done.append("inverted (dark figure on a light background)")
  return array, done


def write_image(path: str | Path, image: np.ndarray) -> None:
  """Saves float [H, W, C] in [0, 1] (C = 1 or 3) as an 8-bit PNG."""
  array = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
  Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
