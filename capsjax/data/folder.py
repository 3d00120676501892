"""A folder of images, one sub-folder per class, trained on as `--dataset folder:PATH`.

Two layouts:

    PATH/train/CLASS/*.png ...  and  PATH/test/CLASS/*.png ...   (the split is the user's)
    PATH/CLASS/*.png ...                                         (a test fraction is held out)

Class names are the sub-folders' names, sorted (label i is the i-th); a test folder may lack a
class but not have one the training folder lacks. Files are PNG, JPEG, BMP, GIF, TIFF, WebP or
PPM/PGM (by suffix; other files and hidden ones are not read), found at any depth under their
class folder. Without train/ and test/, each class's images are ordered by a hash of their path
and the first `round(n * test_fraction)` (at least one of a class of two or more) are held out:
the same split on every machine and in every run, whatever the seed.

Images are brought to one size, `image_size` (H, W) (`--image-size HxW`; default: the size most
images have, which must be more than half of them; the decision is printed) by
`capsjax.data.resize`, and made grey when every image is grey (PIL modes 1, L, LA, I, F), RGB
otherwise (alpha dropped). An image PIL cannot read is an error naming it (not skipped: a
dataset silently one example short is worse than a clear stop).

Decoding happens once: both splits are written to a cache file (`capsjax.data.arrays` format)
under the cache dir ($CAPSJAX_CACHE_DIR, else $XDG_CACHE_HOME/capsjax, else ~/.cache/capsjax),
named by a hash of the folder's path, every file's path, size and modification time, the
requested size and the test fraction; any change to the folder makes a new one. Later runs, and
`capsjax eval` / `viz` of the run, read the cache.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from capsjax.data import arrays, resize, storage
from capsjax.data.dataset import Dataset
from capsjax.data.mnist import builder, loss
from capsjax.infra import distributed

PREFIX = "folder:"
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_TEST_FRACTION = 0.1
CACHE_ENV = "CAPSJAX_CACHE_DIR"
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a folder holds, before decoding.

  Attributes:
    root: the folder (absolute).
    classes: the class names, sorted; label i is classes[i].
    train: (path relative to root, label) of each training image, in the stored order.
    test: the same for the test images.
    held_out: whether the test images were held out of one folder (no train/ and test/).
  """

  root: Path
  classes: tuple[str, ...]
  train: tuple[tuple[str, int], ...]
  test: tuple[tuple[str, int], ...]
  held_out: bool


def cache_dir() -> Path:
  """Where decoded folders are cached: $CAPSJAX_CACHE_DIR, else $XDG_CACHE_HOME/capsjax, else
  ~/.cache/capsjax."""
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base).expanduser() / "capsjax"


def _order_key(relative: str) -> str:
  return hashlib.sha1(relative.encode()).hexdigest()


def _images_of(folder: Path, root: Path) -> list[str]:
  """The image files under `folder` (any depth, hidden ones not), relative to `root`, sorted."""
  found = []
  for path in folder.rglob("*"):
    parts = path.relative_to(folder).parts
    if path.suffix.lower() in SUFFIXES and not any(p.startswith(".") for p in parts) and \
        path.is_file():
      found.append(path.relative_to(root).as_posix())
  return sorted(found)


def _class_folders(folder: Path, where: str) -> list[str]:
  """The class sub-folders of `folder`, sorted (ValueError, one line, if it has none)."""
  names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not names:
    loose = [p.name for p in folder.iterdir() if p.suffix.lower() in SUFFIXES][:3]
    raise ValueError(f"{where} has no class folders{' (images lie loose in it: ' + ', '.join(loose) + ')' if loose else ''}; expected one sub-folder per class, e.g. {where}/cat/1.png.")
  return names


def scan(root: str | os.PathLike, test_fraction: float | None = None) -> Layout:
  """The `Layout` of image folder `root` (see the module docstring).

  Args:
    root: the folder.
    test_fraction: the fraction of each class held out for testing when the folder has no
      train/ and test/ (None: DEFAULT_TEST_FRACTION); must be None for a folder that has them.

  Raises:
    ValueError: (one line) a missing folder; train/ without test/ or the reverse; fewer than
      two classes; a class folder without images; a test class the training folder lacks; a
      test fraction outside (0, 1), or given for a folder with its own test split.
  """
  root = Path(root).expanduser().absolute()
  if not root.is_dir():
    raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory.")
  has = {name: (root / name).is_dir() for name in ("train", "test")}
  if any(has.values()) and not all(has.values()):
    present, absent = ("train", "test") if has["train"] else ("test", "train")
    raise ValueError(f"image folder {str(root)!r} has {present}/ but no {absent}/; expected both "
                     "(PATH/train/CLASS/..., PATH/test/CLASS/...) or neither (PATH/CLASS/..., "
                     "with --test-fraction held out).")
  if all(has.values()):
    if test_fraction is not None:
      raise ValueError(f"image folder {str(root)!r} has its own train/ and test/; "
                       f"--test-fraction ({test_fraction}) applies only to a folder without "
                       "them.")
    classes = _class_folders(root / "train", str(root / "train"))
    test_classes = _class_folders(root / "test", str(root / "test"))
    extra = sorted(set(test_classes) - set(classes))
    if extra:
      raise ValueError(f"{str(root / 'test')!r} has class folder(s) {', '.join(extra)} that "
                       f"{str(root / 'train')!r} lacks; a test class must be trained on.")
    split_of = {"train": root / "train", "test": root / "test"}
  else:
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
        not 0 < fraction < 1:
      raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.")
    classes = _class_folders(root, str(root))
    split_of = {"all": root}
  if len(classes) < 2:
    raise ValueError(f"image folder {str(root)!r} has one class ({classes[0]}); expected at "
                     "least two class folders.")
  parts: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
  for label, name in enumerate(classes):
    for split, folder in split_of.items():
      if not (folder / name).is_dir():
        continue  # a test folder without this class
      files = _images_of(folder / name, root)
      if not files:
        raise ValueError(f"class folder {str(folder / name)!r} holds no images ("
                         f"{', '.join(SUFFIXES)}); remove it or add its images.")
      if split != "all":
        parts[split] += [(f, label) for f in files]
        continue
      ordered = sorted(files, key=_order_key)
      held = round(len(ordered) * fraction)
      held = min(max(held, 1 if len(ordered) > 1 else 0), len(ordered) - 1)
      parts["test"] += [(f, label) for f in ordered[:held]]
      parts["train"] += [(f, label) for f in ordered[held:]]
  if not parts["test"]:
    raise ValueError(f"image folder {str(root)!r} leaves no test images; give each class at "
                     "least two images (or a test/ folder).")
  # A stored order that mixes the classes, so that the first N examples (--test-examples,
  # smoke runs) are not all of class 0; a pure function of the paths.
  ordered = {k: tuple(sorted(v, key=lambda item: _order_key(item[0]))) for k, v in parts.items()}
  return Layout(root, tuple(classes), ordered["train"], ordered["test"], "all" in split_of)


def _fingerprint(layout: Layout, image_size, test_fraction) -> str:
  """The cache key of a folder's decoded splits: a hash of everything they depend on."""
  digest = hashlib.sha256()
  digest.update(json.dumps([arrays.FORMAT, str(layout.root), layout.classes,
                            None if image_size is None else list(image_size),
                            test_fraction]).encode())
  for split in (layout.train, layout.test):
    for relative, label in split:
      stat = (layout.root / relative).stat()
      digest.update(f"{relative}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:32]


def _headers(layout: Layout, files: list[str]) -> tuple[Counter, bool]:
  """(Counter of (H, W) sizes, whether every image is grey) from the files' headers alone.

  Raises:
    ValueError: (one line) a file PIL cannot read, named.
  """
  sizes, grey = Counter(), True
  for relative in tqdm(files, desc=f"scan {layout.root.name}", unit="image", leave=False,
                       disable=None if len(files) >= 2000 else True):  # None: on a terminal
    try:
      with Image.open(layout.root / relative) as image:
        sizes[(image.size[1], image.size[0])] += 1
        grey = grey and image.mode in _GREY_MODES
    except (UnidentifiedImageError, OSError) as e:
      raise ValueError(f"cannot read image {str(layout.root / relative)!r} ({e}); remove or "
                       "replace it.") from None
  return sizes, grey


def choose_size(sizes: Counter, where: str) -> tuple[int, int]:
  """The image size most images have (ValueError, one line, when it is not more than half of
  them: choose one with --image-size HxW)."""
  (size, count), total = sizes.most_common(1)[0], sum(sizes.values())
  if count * 2 <= total:
    common = ", ".join(f"{h}x{w} ({n:,})" for (h, w), n in sizes.most_common(3))
    raise ValueError(f"{where}: images of {len(sizes)} sizes and none held by more than half "
                     f"of them ({common}); choose one with --image-size HxW.")
  return size


def _decode(root: Path, relative: str, size, channels: int) -> np.ndarray:
  try:
    with Image.open(root / relative) as image:
      return resize.from_picture(image, channels, size)
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"cannot read image {str(root / relative)!r} ({e}); remove or replace "
                     "it.") from None


def _decode_all(layout: Layout, image_size, say) -> tuple[storage.Split, storage.Split]:
  """Both splits of `layout` decoded (threads: PIL decodes outside the GIL)."""
  files = [f for f, _ in layout.train + layout.test]
  sizes, grey = _headers(layout, files)
  where = f"folder:{layout.root}"
  size = tuple(image_size) if image_size is not None else choose_size(sizes, where)
  held = (", held out of every class" if layout.held_out else "")
  how = ("--image-size" if image_size is not None else
         "the size of all of them" if len(sizes) == 1 else
         f"the size of {sizes[size]:,} of {len(files):,}; choose another with --image-size HxW")
  say(f"{where}: {len(files):,} images of {len(layout.classes)} classes ({len(layout.train):,} "
      f"train, {len(layout.test):,} test{held}), {'grey' if grey else 'RGB'}, brought to "
      f"{size[0]}x{size[1]} ({how}).")
  channels = 1 if grey else 3
  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    decoded = list(tqdm(pool.map(lambda f: _decode(layout.root, f, size, channels), files),
                        total=len(files), desc=f"decode {layout.root.name}", unit="image",
                        leave=False, disable=None))  # None: a bar on a terminal only
  images = np.stack(decoded).astype(np.uint8)
  labels = np.asarray([label for _, label in layout.train + layout.test], np.int32)
  cut = len(layout.train)
  make = lambda s: storage.Split(images[s], labels[s], len(layout.classes), layout.classes)
  return make(slice(None, cut)), make(slice(cut, None))


def cached(root: str | os.PathLike, image_size=None, test_fraction=None, say=print) -> Path:
  """The cache file of image folder `root` (decoded and written first if it is not there).

  Args:
    root: the folder (see the module docstring).
    image_size: (H, W) to bring every image to; None: the most common size.
    test_fraction: as `scan`.
    say: receives the one-line notes (what was decoded, or which cache was read).

  Returns:
    the path of the `capsjax.data.arrays` file holding both splits.

  Raises:
    ValueError: (one line) what `scan` raises, an unreadable image, or mixed sizes without a
      clear majority and no `image_size`.
  """
  layout = scan(root, test_fraction)
  path = cache_dir() / "folders" / f"{_fingerprint(layout, image_size, test_fraction)}.npz"
  if path.is_file():
    return path
  started = time.perf_counter()
  train, test = _decode_all(layout, image_size, say)
  distributed.decide(lambda: arrays.write(path, train, test))
  say(f"folder:{layout.root}: decoded in {time.perf_counter() - started:.1f} s, cached in "
      f"{str(path)!r}.")
  return path


def dataset(name: str, image_size=None, test_fraction=None) -> Dataset:
  """The `Dataset` of `name` = "folder:PATH", its images brought to `image_size` (H, W; None:
  the most common size) with `test_fraction` held out (a folder without train/ and test/).

  The folder is scanned (and decoded, if not cached) when a split is loaded, not here.

  Raises:
    ValueError: `name` does not start with "folder:" or names no path.
  """
  if not name.startswith(PREFIX) or not name[len(PREFIX):]:
    raise ValueError(f"an image folder dataset is named folder:PATH, got {name!r}.")
  root = Path(name[len(PREFIX):]).expanduser()
  say = print if distributed.is_main() else (lambda *_: None)

  def load(split: str, data_dir, limit: int | None) -> storage.Split:
    del data_dir
    return arrays.read(cached(root, image_size, test_fraction, say), split, limit)

  return Dataset(name=name, description=f"the images in folder {str(root)!r}, one sub-folder "
                 "per class", splits=("train", "test"), load=load,
                 size=lambda split, stored: len(stored), builder=builder, loss=loss,
                 uses_augmentation=True, reads_data_dir=False,
                 options=("image_size", "test_fraction"))
