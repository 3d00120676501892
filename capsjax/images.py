"""Pictures (image files, PIL images, numpy arrays) as model inputs, for `capsjax predict` and
`capsjax.TrainedModel.predict`.

`read_image` makes a picture look like the digits the network was trained on, the way MNIST
itself was made. LeCun, Cortes and Burges, "The MNIST database of handwritten digits"
(http://yann.lecun.com/exdb/mnist/): the NIST digits "were size normalized to fit in a 20x20
pixel box while preserving their aspect ratio. The resulting images contain grey levels as a
result of the anti-aliasing technique used by the normalization algorithm. The images were
centered in a 28x28 image by computing the center of mass of the pixels, and translating the
image so as to position this point at the center of the 28x28 field." A photo or scan of a digit
(dark ink on lighter paper, uneven lighting, noise, a large canvas with margins) is first made
light ink on black, then normalised in the same way; every step done is reported.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from capsjax.data import resize
from capsjax.nn.inputs import IMAGE_DTYPES

_READABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F")

MNIST_SIZE = 28  # MNIST's canvas ...
MNIST_BOX = 20  # ... and the box its digits are size-normalised to fit
_BORDER = 0.06  # the border ring the background is estimated from: 6% of the shorter side
_NOISE_SIGMAS = 4.0  # ink under 4 noise sigmas of the border is background
_FAINT = 0.1  # on a noisy background, ink under 10% of the figure's peak is cleared too
_SPECK = 0.01  # separate blobs holding under 1% of the ink (noisy backgrounds) are removed
_EXTENT = 0.25  # the figure's extent (what is scaled to the box): ink >= 25% of its peak
_MIN_CONTRAST = 10 / 255  # a figure must stand out from the background by this much
_LARGEST = 1024  # larger pictures are shrunk first, to this shorter side

Picture = str | os.PathLike | Image.Image | np.ndarray
"""What `read_image` reads: a file's path, a PIL image, or a uint8 / float [0, 1] array."""


# The datasets of digits (and Fashion-MNIST's products) made as MNIST was: a picture for a model
# trained on one is normalised as in `read_image`; for any other (a user's folder, a TFDS set of
# photos) it is only converted and resized, as that dataset's images were for training.
DIGIT_DATASETS = ("mnist", "fashion_mnist", "multimnist", "expanded_mnist", "affnist_style",
                  "affnist", "tfds:mnist", "tfds:fashion_mnist")


def digit_box(input_shape: tuple[int, int, int], dataset: str | None = None
              ) -> tuple[int, str]:
  """The box a figure is scaled to fit, and how it is centred, for a model of `input_shape`.

  MNIST-derived datasets (MNIST, MultiMNIST 36x36, expanded MNIST / affNIST 40x40) keep MNIST's
  digit size: a 20x20 box, centred by the centre of mass, in any canvas of at least 28x28 (a
  smaller canvas: a box of 20/28 of its shorter side). Fashion-MNIST was made otherwise (Xiao et
  al. 2017: each product trimmed, its longest edge resized to 28, centred): its box is the whole
  canvas, centred by the box's middle.

  Returns:
    (box side in pixels, "mass" or "box").
  """
  short = min(input_shape[0], input_shape[1])
  if dataset in ("fashion_mnist", "tfds:fashion_mnist"):
    return short, "box"
  return min(MNIST_BOX, max(1, round(MNIST_BOX * short / MNIST_SIZE))), "mass"


def read_image(source: Picture, input_shape: tuple[int, int, int], *,
               dataset: str | None = None, name: str | None = None
               ) -> tuple[np.ndarray, list[str]]:
  """`source` made into one input of a model with `input_shape`, and the steps that were done.

  The steps, each listed in the returned `converted` only when it changed something (an MNIST
  digit saved as a 28x28 PNG comes back unchanged, with no steps):

  1. Transparency is flattened (onto white when the opaque part is dark, else onto black),
     16/32-bit grey scaled to 8 bits, colour made grey for a 1-channel model (or grey made RGB
     for a 3-channel one).
  2. The background is estimated from the picture's border (a ring 6% of the shorter side wide;
     a smooth quadratic surface fitted robustly, so uneven lighting and ink that touches the
     border are allowed for), not from the global mean. Light ink on a dark background: the
     background is subtracted. Dark ink on lighter paper (the border is lighter than the ink):
     the picture is divided by the paper's brightness and inverted, so the ink becomes light on
     black and uneven lighting cancels out.
  3. Contrast stretched: ink within 4 noise sigmas of the border (and, on a noisy background,
     under 10% of the figure's peak, and blobs holding under 1% of the ink) becomes 0, the
     figure's peak (its 99th percentile) 255.
  4. Size normalised as MNIST was: cropped to its ink (pixels >= 25% of the peak) and scaled,
     aspect ratio kept and anti-aliased (area averaging when shrinking, bicubic when
     enlarging; the peak brought back to 255 when shrinking dims thin strokes), so that its
     longer side fills the box of `digit_box` (20 pixels for MNIST; not rescaled when it is
     within a pixel of it already).
  5. Centred in the model's H x W by its centre of mass (moved by whole pixels to put it at
     (H/2, W/2), where MNIST's digits have theirs).

  For a 3-channel model every colour channel goes through the same steps: the polarity, the
  crop, the scale and the shift are found on the grey picture, the background and the stretch
  per channel. A picture whose shorter side exceeds 1024 pixels is shrunk to 1024 first.

  The picture should show the figure on its background alone: crop a photo to the paper (a
  border of table, or of the paper's edge, would be taken for the background, and the sheet for
  the figure).

  Args:
    source: a file's path (PNG, JPEG, BMP, GIF, TIFF, ... anything PIL reads), a PIL image, or
      a numpy array: [H', W'] or [H', W', 1] grey, [H', W', 3] RGB or [H', W', 4] RGBA, uint8
      (0..255) or float in [0, 1], of any size.
    input_shape: the model's (H, W, C), C 1 or 3.
    dataset: the model's training dataset (see `digit_box`); None: MNIST's layout. For a
      dataset not in DIGIT_DATASETS (an image folder, a TFDS set of photos) only step 1 is
      done, by PIL's `convert`, and the picture is resized to H x W
      (`capsjax.data.resize.from_picture`), exactly as that dataset's images were.
    name: what error messages call the picture (default: the path, or "image").

  Returns:
    (uint8 [H, W, C] array, light figure on black; the list of steps done, in order).

  Raises:
    ValueError: one line starting with the picture's name: a directory, a missing or
      unreadable file, something that is not an image, an image mode or array shape or dtype
      that is not a picture, a model of neither 1 nor 3 channels, a picture smaller than half
      the box (10x10 for MNIST's 20x20), a blank one (a single colour), or one in which no
      figure stands out from the background.
  """
  height, width, channels = input_shape
  label = name if name is not None else (str(source) if isinstance(source, (str, os.PathLike))
                                         else "image")
  image = _open(source, label)
  if channels not in (1, 3):
    raise ValueError(f"{label}: the model takes {channels} channels; only 1 (grey) or 3 (RGB) "
                     "can be made from an image.")
  if dataset is not None and dataset not in DIGIT_DATASETS:  # as its training images were
    _check_mode(image, label)
    done = [] if image.size == (width, height) else [
        f"resized from {image.size[1]}x{image.size[0]} to {height}x{width} (HxW)"]
    if image.mode not in (("L",) if channels == 1 else ("RGB",)):
      done.insert(0, f"{image.mode} converted to {'grey' if channels == 1 else 'RGB'}")
    return resize.from_picture(image, channels, (height, width)), done
  done: list[str] = []
  picture = image
  image = _to_mode(image, "L" if channels == 1 else "RGB", label, done)
  if min(image.size) > _LARGEST:  # a camera's 4000x3000: the figure ends up 20 pixels anyway
    factor = min(image.size) / _LARGEST
    size = (round(image.size[0] / factor), round(image.size[1] / factor))
    done.append(f"shrunk from {image.size[0]}x{image.size[1]} to {size[0]}x{size[1]} first "
                "(area averaging)")
    image = image.resize(size, Image.Resampling.BOX)
  pixels = np.asarray(image, np.float64).reshape(image.size[1], image.size[0], channels)
  h, w = pixels.shape[:2]
  box, centring = digit_box(input_shape, dataset)
  least = max(3, box // 2)
  if min(h, w) < least:
    raise ValueError(f"{label}: the picture is {w}x{h} pixels, too small: a {width}x{height} "
                     f"model needs at least {least}x{least} (its figures fill a {box}x{box} "
                     "box).")
  if np.all(pixels == pixels[0, 0]):
    raise ValueError(f"{label}: blank picture: every pixel is {_colour(pixels, picture)}; "
                     "nothing to classify.")
  ink = _ink(pixels, label, done)
  return _normalise(ink, (height, width), box, centring, done), done


def _colour(pixels: np.ndarray, picture: Image.Image) -> str:
  """What the one colour of a blank picture is: "grey level V" or "colour (R, G, B)"."""
  value = pixels[0, 0].round().astype(int)
  if len(value) == 3:
    return f"colour {tuple(value.tolist())}"
  if picture.mode in ("1", "L", "LA", "I", "I;16", "F"):
    return f"grey level {value[0]}"
  rgb = np.asarray(_to_mode(picture, "RGB", "", []))
  if np.all(rgb == rgb[0, 0]):
    return f"colour {tuple(rgb[0, 0].tolist())}"
  return f"grey level {value[0]} once made grey (colours of one brightness)"


def _open(source: Picture, label: str) -> Image.Image:
  """`source` as a PIL image (a copy: the caller's is never changed)."""
  if isinstance(source, Image.Image):
    return source.copy()
  if not isinstance(source, (str, os.PathLike)):
    return _from_array(np.asarray(source), label)
  path = Path(source)
  if path.is_dir():
    raise ValueError(f"{label}: is a directory, expected an image file.")
  if not path.exists():
    raise ValueError(f"{label}: no such file.")
  try:
    with Image.open(path) as opened:
      opened.load()
      return opened.copy()
  except UnidentifiedImageError:
    raise ValueError(f"{label}: not an image PIL can read (PNG, JPEG, BMP, GIF, TIFF, ...).") \
        from None
  except OSError as e:
    raise ValueError(f"{label}: unreadable image ({e}).") from None


def _from_array(array: np.ndarray, label: str) -> Image.Image:
  """A grey, RGB or RGBA array (uint8, or float in [0, 1]) as a PIL image."""
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
    raise ValueError(f"{label}: a picture array must be [H, W] or [H, W, 1] (grey), [H, W, 3] "
                     f"(RGB) or [H, W, 4] (RGBA), got shape {array.shape}.")
  if np.issubdtype(array.dtype, np.floating):
    finite = np.isfinite(array).all()
    if not finite or array.min() < 0 or array.max() > 1:
      got = "NaN or Inf" if not finite else f"values from {array.min():g} to {array.max():g}"
      raise ValueError(f"{label}: float pictures must lie in [0, 1], got {got}.")
    array = np.floor(array * 255 + 0.5).astype(np.uint8)
  elif array.dtype != np.uint8:
    raise ValueError(f"{label}: pictures must be {IMAGE_DTYPES}, got dtype {array.dtype}.")
  return Image.fromarray(np.ascontiguousarray(array))


def _check_mode(image: Image.Image, label: str, target: str = "L or RGB") -> None:
  """Raises ValueError (one line naming the picture) for a PIL mode that cannot be converted."""
  if image.mode not in _READABLE_MODES:
    raise ValueError(f"{label}: image mode {image.mode!r} cannot be converted to "
                     f"{'grey' if target == 'L' else 'RGB' if target == 'RGB' else target}.")


def _to_mode(image: Image.Image, target: str, label: str, done: list[str]) -> Image.Image:
  """`image` in PIL mode `target` ("L" or "RGB"), each conversion appended to `done`."""
  mode = image.mode
  _check_mode(image, label, target)
  if mode in ("I", "I;16", "F"):  # 16/32-bit grey: scale to 0..255
    values = np.asarray(image, np.float64)
    span = values.max() - values.min()
    values = (values - values.min()) / (span if span else 1.0) * 255
    image = Image.fromarray(values.round().astype(np.uint8))
    done.append(f"{mode} scaled to 8-bit grey")
  elif mode in ("LA", "PA", "RGBA", "P") and (mode != "P" or "transparency" in image.info):
    rgba = np.asarray(image.convert("RGBA"), np.float64)
    alpha = rgba[..., 3] / 255
    if alpha.min() < 1:  # something is transparent: flatten onto the opposite of the figure
      luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])
      dark = (luma * alpha).sum() < 127.5 * alpha.sum()
      back = 255.0 if dark else 0.0
      flat = rgba[..., :3] * alpha[..., None] + back * (1 - alpha[..., None])
      image = Image.fromarray(np.floor(flat + 0.5).astype(np.uint8))
      done.append(f"transparency flattened onto {'white' if dark else 'black'}")
    else:
      image = image.convert("RGB")
    if mode == "LA":  # grey it was
      image = image.convert("L")
  if image.mode != target:
    done.append(f"{image.mode} converted to {'grey' if target == 'L' else 'RGB'}")
    image = image.convert(target)
  return image


def _ring(height: int, width: int) -> np.ndarray:
  """The border ring (bool [H, W]) the background is estimated from."""
  size = max(1, round(min(height, width) * _BORDER))
  ring = np.zeros((height, width), bool)
  ring[:size], ring[-size:], ring[:, :size], ring[:, -size:] = True, True, True, True
  return ring


def _background(values: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, float]:
  """A smooth background under `values` [H, W], fitted to its `ring`, and the noise's sigma.

  A quadratic surface in x and y, fitted by least squares to the ring's pixels, again and again
  without those more than 3 sigmas (+ half a grey level) away from it (ink reaching the border,
  specks), sigma being the kept residuals' median absolute deviation x 1.4826.
  """
  height, width = values.shape
  y = (np.arange(height) / max(height - 1, 1) * 2 - 1)[:, None]  # -1..1, broadcast to [H, W]
  x = (np.arange(width) / max(width - 1, 1) * 2 - 1)[None, :]
  terms = lambda y, x: [np.ones_like(x * y), x + 0 * y, y + 0 * x, x * y, x * x + 0 * y,
                        y * y + 0 * x]
  ys, xs = np.nonzero(ring)
  a = np.stack(terms(y[ys, 0], x[0, xs]), -1)
  z = values[ring]
  keep = np.ones(len(z), bool)
  sigma = 0.0
  for _ in range(6):
    coef = np.linalg.lstsq(a[keep], z[keep], rcond=None)[0]
    residual = z - a @ coef
    kept = residual[keep]
    sigma = 1.4826 * float(np.median(np.abs(kept - np.median(kept))))
    new_keep = np.abs(residual) <= 3 * sigma + 0.5
    if new_keep.sum() < a.shape[-1] * 2 or np.array_equal(new_keep, keep):
      break
    keep = new_keep
  surface = sum(c * term for c, term in zip(coef, terms(y, x)))
  return np.clip(surface, 0.0, 255.0), sigma if sigma > 1e-3 else 0.0  # 0: a clean one


def _ink(pixels: np.ndarray, label: str, done: list[str]) -> np.ndarray:
  """Float [h, w, C] in [0, 1]: the figure light on black, the background 0, its peak 1."""
  height, width, channels = pixels.shape
  ring = _ring(height, width)
  grey = pixels[..., 0] if channels == 1 else pixels @ np.array([0.299, 0.587, 0.114])
  grey_background, _ = _background(grey, ring)
  difference = ndimage.uniform_filter(grey - grey_background, 3)
  dark = -difference.min() > difference.max()  # the border is lighter than the ink
  backgrounds, sigmas = zip(*(_background(pixels[..., c], ring) for c in range(channels)))
  background = np.stack(backgrounds, -1)
  if dark:  # divided by the paper's brightness: uneven lighting cancels out
    paper = np.maximum(background, 8.0)
    ink = (background - pixels) / paper
    noise = np.array(sigmas) / paper.reshape(-1, channels).mean(0)
  else:
    ink = (pixels - background) / 255
    noise = np.array(sigmas) / 255
  low, high = float(grey_background.min()), float(grey_background.max())
  if dark or high >= 0.5:
    even = high - low < max(5.0, 0.05 * high)  # within what a fit to noisy pixels wobbles
    level = f"grey {(low + high) / 2:.0f}" if even else f"grey {low:.0f}..{high:.0f}, uneven"
    done.append(f"background estimated from the border ({level}) and "
                f"{'divided out' if dark else 'subtracted'}")
  if dark:
    done.append("inverted (dark ink on a lighter background)")
  if channels == 1:
    grey_ink, grey_noise = ink[..., 0], noise[0]
  else:  # the decisions are the grey picture's; each channel is stretched on its own
    grey_ink = (grey_background - grey) / np.maximum(grey_background, 8.0) if dark else \
        (grey - grey_background) / 255
    grey_noise = float(np.array([0.299, 0.587, 0.114]) @ noise)
  floor, peak = _levels(grey_ink, grey_noise)
  if peak - floor < max(_MIN_CONTRAST, 2 * grey_noise):
    raise ValueError(f"{label}: no figure stands out from the background (no ink stronger "
                     "than the noise of its border); expected one digit on its paper.")
  stretched = []
  for c in range(channels):
    levels = (floor, peak) if channels == 1 else _levels(ink[..., c], noise[c])
    if levels[1] - levels[0] < max(_MIN_CONTRAST, 2 * noise[c]):
      levels = (floor, peak)  # a channel without contrast of its own: the grey picture's levels
    values = ink[..., c]
    if levels[0] > 0 or levels[1] < 0.95:
      values = (values - levels[0]) / (levels[1] - levels[0])
    stretched.append(np.clip(values, 0.0, 1.0))
  ink = np.stack(stretched, -1)
  if floor > 0 or peak < 0.95:
    done.append(f"contrast stretched (ink {floor * 255:.0f}..{peak * 255:.0f} of 255 made "
                "0..255)")
  if max(noise) > 0:  # blobs of noise apart from the figure
    blobs, count = ndimage.label(ink.max(-1) > 0, np.ones((3, 3)))
    mass = ndimage.sum(ink.mean(-1), blobs, np.arange(1, count + 1))
    specks = np.nonzero(mass < _SPECK * mass.sum())[0] + 1
    if specks.size:
      ink[np.isin(blobs, specks)] = 0.0
      done.append(f"{specks.size} speck{'s' if specks.size > 1 else ''} of noise removed")
  return ink


def _levels(ink: np.ndarray, sigma: float) -> tuple[float, float]:
  """(floor, peak) of an ink map: what becomes 0 (4 noise sigmas; on a noisy background also
  10% of the peak) and 1 (the 99th percentile of the ink above 4 sigmas)."""
  above = ink[ink > _NOISE_SIGMAS * sigma]
  peak = float(np.percentile(above, 99)) if above.size else 0.0
  floor = max(_NOISE_SIGMAS * sigma, _FAINT * peak) if sigma > 0 else 0.0
  return floor, peak


def _normalise(ink: np.ndarray, shape: tuple[int, int], box: int, centring: str,
               done: list[str]) -> np.ndarray:
  """`ink` [h, w, C] scaled to fit `box` and centred in `shape` (H, W): uint8 [H, W, C]."""
  height, width = shape
  h, w, channels = ink.shape
  grey = ink.mean(-1)
  rows = np.nonzero((grey >= _EXTENT * grey.max()).any(1))[0]
  cols = np.nonzero((grey >= _EXTENT * grey.max()).any(0))[0]
  top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
  extent = max(bottom - top + 1, right - left + 1)
  scale = 1.0 if abs(extent - box) <= 1 else box / extent  # within a pixel: as MNIST's are
  margin = int(np.ceil(2 / scale)) + 1  # the figure's faint rim
  crop = ink[max(0, top - margin):bottom + margin + 1, max(0, left - margin):right + margin + 1]
  if scale == 1.0 and (h, w) == shape:
    scaled = ink
  elif scale == 1.0:
    scaled = crop
    done.append(f"cropped to the ink ({right - left + 1}x{bottom - top + 1} of {w}x{h} pixels), "
                f"which fits the {box}x{box} box already")
  else:
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    scaled = np.stack([np.asarray(Image.fromarray(crop[..., c].astype(np.float32), "F")
                                  .resize(size, resample)) for c in range(channels)], -1)
    scaled = np.clip(scaled.astype(np.float64), 0.0, 1.0)
    peak = scaled.max()
    if 0 < peak < 0.95:  # area averaging dims thin strokes: the peak back to 255
      scaled = scaled / peak
    done.append(f"cropped to the ink ({right - left + 1}x{bottom - top + 1} of {w}x{h} pixels) "
                f"and scaled by {scale:.3g} to fit a {box}x{box} box (aspect ratio kept, "
                "anti-aliased)")
  grey = scaled.mean(-1)
  if centring == "mass":
    cy, cx = ndimage.center_of_mass(grey)
    target_y, target_x = height / 2, width / 2
  else:
    ys, xs = np.nonzero(grey >= _EXTENT * grey.max())
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    target_y, target_x = (height - 1) / 2, (width - 1) / 2
  dy, dx = int(np.floor(target_y - cy + 0.5)), int(np.floor(target_x - cx + 0.5))
  canvas = np.zeros((height, width, channels))
  sh, sw = scaled.shape[:2]
  y0, x0 = max(0, dy), max(0, dx)
  y1, x1 = min(height, dy + sh), min(width, dx + sw)
  if y1 > y0 and x1 > x0:
    canvas[y0:y1, x0:x1] = scaled[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
  how = "its centre of mass" if centring == "mass" else "the middle of its box"
  if scale != 1.0 or (h, w) != shape:
    done.append(f"centred by {how} in {width}x{height}")
  elif (dy, dx) != (0, 0):
    done.append(f"moved by ({dx}, {dy}) pixels to put {how} at the centre")
  return np.floor(canvas * 255 + 0.5).clip(0, 255).astype(np.uint8)


def write_image(path: str | Path, image: np.ndarray) -> None:
  """Saves float [H, W, C] in [0, 1] (C = 1 or 3) as an 8-bit PNG."""
  array = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
  Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
