"""`capsjax viz`: what a trained network learnt, drawn from its checkpoint as PNGs.

    capsjax viz --workdir runs/hour --data-dir ../shared/tensorflow_datasets --out figures/

- reconstructions (the paper's Fig. 3): test images above their reconstructions, decoded from the
  predicted class's capsule, with the true and predicted class; misclassified ones included.
- perturbations (Fig. 4): one test digit of each class (or `--digit K`), each of its capsule's
  dimensions moved by -0.25 to 0.25 in steps of 0.05 and decoded; one row per dimension.
- routing: the final coupling coefficients c_ij (Eq. 3) of one test image to its predicted class
  over the primary-capsule grid (for MNIST 6x6 positions x 32 types), and the mean coupling from
  each primary-capsule type to each class over the test set.
- confusion: the test set's confusion matrix.
- curves: the training curves of metrics.jsonl.
- multimnist (Fig. 5; MultiMNIST runs): test pairs, each above its two most active classes'
  reconstructions drawn in red and green over each other, with the true (L) and predicted (R)
  pairs, wrong ones included, and the reconstruction of the most active class that is absent
  (*).
- samples: examples of the run's dataset as the network sees them (training examples with their
  random translation or pairing, and test examples).
- affnist (40x40 networks): affNIST-style test examples with the network's predictions.

The numbers of each figure come from a pure function here (tested); the `draw_*` functions only
plot them. Only the figures that apply to the run are drawn unless named (`applicable_figures`:
not the capsule figures for the baseline, not `multimnist` or `affnist` for an MNIST run); a
named one that does not apply is skipped with the reason (`skip_reason`).
"""

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from capsjax.nn.inputs import to_float

FIGURES = ("reconstructions", "perturbations", "routing", "confusion", "curves", "multimnist",
           "samples", "affnist")
# Figures of one-label datasets (MultiMNIST runs draw `multimnist`, `samples` and `curves`).
_ONE_LABEL = ("reconstructions", "perturbations", "routing", "confusion")
# `viz` builds at most this many test examples unless told otherwise (`--test-examples N|all`):
# a run that evaluated on more (a MultiMNIST run's 10M pairs) is drawn from so many of them.
VIZ_EXAMPLES = 10_000
OFFSETS = tuple(float(x) for x in np.round(np.linspace(-0.25, 0.25, 11), 2))  # Fig. 4
PERTURBATION_SCALE = 2  # the perturbations figure draws each decoded image at 2x its size


class TestSetPass(NamedTuple):
  """A trained network's outputs over a test split (N images, K classes).

  Attributes:
    labels: [N] int, the true classes.
    predictions: [N] int, the highest-scoring classes.
    capsules: [N, K, D] class capsules, or None (no capsules).
    reconstructions: [N, H, W, C] in [0, 1], or None (no decoder).
    type_coupling: [types, K] the mean over images and grid positions of the coupling from
      each primary-capsule type to each class, or None (no routing).
  """

  labels: np.ndarray
  predictions: np.ndarray
  capsules: np.ndarray | None
  reconstructions: np.ndarray | None
  type_coupling: np.ndarray | None


def primary_grid(model) -> tuple[int, int, int] | None:
  """(OH, OW, types) of the primary capsules of a `capsjax.api.TrainedModel`, None if none."""
  grid = getattr(model.model, "primary_grid", None)
  return None if grid is None else tuple(grid)


def _routing_phrase(config) -> str:
  """"dynamic, 3 iterations, last iteration's couplings" or "self_attention, one pass"."""
  from capsjax import routing as routing_lib

  rule, iters = config.routing, config.routing_iters
  if rule in routing_lib.available() and not routing_lib.info(rule).iterative:
    return f"{rule}, one pass"
  return f"{rule}, {iters} iteration{'s' if iters != 1 else ''}, last iteration's couplings"


def coupling_by_type(couplings: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
  """Couplings [B, OH*OW*types, K] summed over images and positions -> [types, K]."""
  oh, ow, types = grid
  return couplings.reshape(couplings.shape[0], oh * ow, types, -1).sum(axis=(0, 1))


def coupling_map(couplings: np.ndarray, grid: tuple[int, int, int], cls: int) -> np.ndarray:
  """One image's couplings [OH*OW*types, K] to class `cls` as [types, OH, OW] maps."""
  oh, ow, types = grid
  return couplings[:, cls].reshape(oh, ow, types).transpose(2, 0, 1)


def run_test_set(model, images: np.ndarray, labels: np.ndarray, progress: bool = True
                 ) -> TestSetPass:
  """`model` (a `capsjax.api.TrainedModel`) over `images` [N, H, W, C], in its batches."""
  grid = primary_grid(model)
  predictions, capsules, reconstructions, coupling = [], [], [], None
  bar = tqdm(total=len(images), unit="example", desc=f"viz: test set ({len(images):,} examples)",
             disable=not progress, dynamic_ncols=True, leave=False)
  for start in range(0, len(images), model.batch_size):
    out = model.outputs(images[start:start + model.batch_size], processed=True)
    bar.update(len(out.scores))
    predictions.append(np.argmax(out.scores, -1))
    if out.capsules is not None:
      capsules.append(out.capsules)
    if out.reconstructions is not None:
      reconstructions.append(out.reconstructions)
    if out.couplings is not None and grid is not None:
      part = coupling_by_type(out.couplings, grid)
      coupling = part if coupling is None else coupling + part
  bar.close()
  if coupling is not None:
    coupling = coupling / (len(images) * grid[0] * grid[1])
  return TestSetPass(np.asarray(labels), np.concatenate(predictions),
                     np.concatenate(capsules) if capsules else None,
                     np.concatenate(reconstructions) if reconstructions else None, coupling)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int
                     ) -> np.ndarray:
  """[K, K] counts: row = true class, column = predicted class."""
  flat = np.asarray(labels) * num_classes + np.asarray(predictions)
  return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def pick_examples(labels: np.ndarray, predictions: np.ndarray, num_correct: int = 8,
                  num_wrong: int = 4) -> np.ndarray:
  """Indices of the first `num_correct` correctly and the first `num_wrong` wrongly classified
  examples (fewer where there are fewer)."""
  right = np.flatnonzero(labels == predictions)[:num_correct]
  wrong = np.flatnonzero(labels != predictions)[:num_wrong]
  return np.concatenate([right, wrong]).astype(int)


def digit_examples(labels: np.ndarray, predictions: np.ndarray, classes) -> dict[int, int]:
  """{class: index of its first correctly classified test example (else its first example)}."""
  chosen = {}
  for k in classes:
    of_class = np.flatnonzero(labels == k)
    right = of_class[predictions[of_class] == k]
    if len(of_class):
      chosen[int(k)] = int(right[0] if len(right) else of_class[0])
  return chosen


def perturbations(model, capsules: np.ndarray, cls: int, offsets=OFFSETS,
                  dims: int | None = None) -> np.ndarray:
  """Fig. 4: decode `capsules` [K, D] with dimension d of class `cls` moved by each offset.

  Args:
    model: a `capsjax.api.TrainedModel` of a CapsNet.
    capsules: [K, D] one example's class capsules.
    cls: the class whose capsule is perturbed and decoded.
    offsets: the amounts added to each dimension (default -0.25..0.25 in steps of 0.05).
    dims: perturb the first `dims` dimensions; None: all D.

  Returns:
    [dims, len(offsets), H, W, C] in [0, 1]; row d, column j decodes capsule `cls` with
      v[cls, d] += offsets[j] (the decoder masked to `cls`, as at test time).
  """
  dims = capsules.shape[-1] if dims is None else dims
  offsets = np.asarray(offsets, np.float32)
  v = np.repeat(np.asarray(capsules, np.float32)[None], dims * len(offsets), axis=0)
  rows = np.repeat(np.arange(dims), len(offsets))
  v[np.arange(len(v)), cls, rows] += np.tile(offsets, dims)
  recon = model.decode(v, np.full(len(v), cls))
  return recon.reshape(dims, len(offsets), *recon.shape[1:])


def mosaic(images: np.ndarray, gap: int = 1, fill: float = 1.0) -> np.ndarray:
  """[R, C, H, W, ch] -> one [R*(H+gap)-gap, C*(W+gap)-gap(, ch)] image; gaps hold `fill`."""
  r, c, h, w, ch = images.shape
  out = np.full((r * (h + gap) - gap, c * (w + gap) - gap, ch), fill, np.float32)
  for i in range(r):
    for j in range(c):
      out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i, j]
  return out[..., 0] if ch == 1 else out


class PairPanels(NamedTuple):
  """Fig. 5's numbers for N MultiMNIST test pairs.

  Attributes:
    predicted: [N, 2] the two longest capsules' classes (longest first).
    correct: [N] bool, `predicted` is the true pair (`multimnist.both_correct`).
    first: [N, H, W, C] reconstruction from predicted[:, 0]'s capsule.
    second: [N, H, W, C] reconstruction from predicted[:, 1]'s capsule.
    absent: [N] the longest capsule's class among those neither true nor predicted.
    absent_reconstruction: [N, H, W, C] that class's reconstruction.
  """

  predicted: np.ndarray  # [N, 2] the two longest capsules' classes (longest first)
  correct: np.ndarray  # [N] bool: `predicted` is the true pair (`multimnist.both_correct`)
  first: np.ndarray  # [N, H, W, C] reconstruction from predicted[:, 0]'s capsule
  second: np.ndarray  # [N, H, W, C] from predicted[:, 1]'s
  absent: np.ndarray  # [N] the longest capsule's class among those neither true nor predicted
  absent_reconstruction: np.ndarray  # [N, H, W, C]


def pair_panels(model, images: np.ndarray, labels: np.ndarray, progress: bool = False
                ) -> PairPanels:
  """Fig. 5: `model` (a TrainedModel of a CapsNet) on pairs `images` [N, H, W, C] with true
  classes `labels` [N, 2]: its two most active classes, each decoded alone, and the most active
  class that is not in the image (decoded, it shows what the network "imagines"). `progress`: a
  bar counting the N pairs."""
  parts = []
  with tqdm(total=len(images), unit="example", desc=f"viz: test pairs ({len(images):,} examples)",
            disable=not progress, dynamic_ncols=True, leave=False) as bar:
    for start in range(0, len(images), model.batch_size):
      parts.append(model.outputs(images[start:start + model.batch_size], processed=True))
      bar.update(len(parts[-1].scores))
  out = type(parts[0])(*(None if columns[0] is None else np.concatenate(columns)
                         for columns in zip(*parts)))
  lengths = np.asarray(out.scores)
  predicted = np.argsort(-lengths, axis=-1, kind="stable")[:, :2]
  correct = np.all(np.sort(predicted, -1) == np.sort(labels, -1), -1)
  shown = np.zeros_like(lengths, bool)
  rows = np.arange(len(lengths))[:, None]
  shown[rows, labels] = True
  shown[rows, predicted] = True
  absent = np.argmax(np.where(shown, -np.inf, lengths), -1)
  decode = lambda classes: model.decode(out.capsules, classes)
  return PairPanels(predicted, correct, decode(predicted[:, 0]), decode(predicted[:, 1]), absent,
                    decode(absent))


def overlay(first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """Two [H, W, 1] reconstructions as one RGB image: the first in red, the second in green
  (yellow where they overlap), on black."""
  return np.concatenate([first, second, np.zeros_like(first)], -1).clip(0, 1)


class RunTraits(NamedTuple):
  """What decides which figures apply to a run (`run_traits`).

  Attributes:
    dataset: the dataset it trained on.
    arch: its architecture's name.
    input_hw: (H, W) of its inputs.
    has_decoder: it reconstructs (CapsNet's decoder).
    has_capsules: it has class capsules to perturb.
    has_routing: it routes primary capsules on a grid (`primary_grid`).
  """

  dataset: str
  arch: str
  input_hw: tuple[int, int]
  has_decoder: bool
  has_capsules: bool
  has_routing: bool


def run_traits(model) -> RunTraits:
  """The `RunTraits` of a `capsjax.api.TrainedModel`."""
  capsules = getattr(model.model, "decode", None) is not None
  # A capsule network may be built without its decoder (Efficient-CapsNet's reconstruction=False).
  decoder = capsules and getattr(model.model, "decoder", None) is not None
  return RunTraits(model.config.dataset, model.arch.name, tuple(model.input_shape[:2]),
                   decoder, capsules, primary_grid(model) is not None)


def skip_reason(figure: str, traits: RunTraits) -> str | None:
  """Why `figure` does not apply to a run with `traits`, or None if it does."""
  two_digit = traits.dataset == "multimnist"
  if figure in _ONE_LABEL and two_digit:
    return "a MultiMNIST run has two labels per example; see the multimnist figure"
  if figure == "multimnist" and not two_digit:
    return f"the run trained on {traits.dataset}, not multimnist"
  if figure == "affnist" and tuple(traits.input_hw) != (40, 40):
    return f"the network takes {traits.input_hw[0]}x{traits.input_hw[1]} inputs, affNIST 40x40"
  if figure in ("reconstructions", "perturbations") and traits.has_capsules and \
      not traits.has_decoder:
    return f"this {traits.arch} network was built without its decoder"
  if figure == "reconstructions" and not traits.has_decoder:
    return f"arch {traits.arch!r} has no decoder"
  if figure == "perturbations" and not traits.has_capsules:
    return f"arch {traits.arch!r} has no capsules"
  if figure == "routing" and not traits.has_routing:
    return f"arch {traits.arch!r} has no routing"
  return None


def applicable_figures(traits: RunTraits) -> list[str]:
  """The FIGURES that apply to a run with `traits` (what `capsjax viz` draws by default)."""
  return [f for f in FIGURES if skip_reason(f, traits) is None]


def text_color(rgb) -> str:
  """"white" or "black", whichever reads better on a background of colour `rgb` (RGB or RGBA
  in [0, 1]): black where the background's relative luminance (WCAG 2) is above 0.179, the
  level at which both contrast equally."""
  c = np.asarray(rgb, float)[:3]
  linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
  luminance = float(linear @ np.array([0.2126, 0.7152, 0.0722]))
  return "black" if luminance > 0.179 else "white"


def centred_range(values: np.ndarray, centre: float, min_half_width: float
                  ) -> tuple[float, float]:
  """A colour range (vmin, vmax) symmetric about `centre` that holds `values` and reaches at
  least `min_half_width` either side, so that differences far smaller than that stay pale
  instead of spanning the whole colour map."""
  values = np.asarray(values, float)
  spread = float(np.nanmax(np.abs(values - centre))) if np.any(np.isfinite(values)) else 0.0
  half = max(spread, min_half_width)
  return centre - half, centre + half


def wrap_title(title: str, width_in: float, fontsize: float) -> str:
  """`title` broken into lines (at spaces; its own line breaks kept) that fit a figure
  `width_in` inches wide in a font of `fontsize` points, a character taken as 0.6 em (above
  DejaVu Sans's average, so a line rather falls short than overflows)."""
  import textwrap

  chars = max(12, int(width_in * 72 / (0.6 * fontsize)))
  return "\n".join(textwrap.fill(line, chars) for line in title.splitlines())


# ---- drawing (matplotlib, imported on first use: an optional dependency) --------------------

def _pyplot():
  """matplotlib.pyplot on the Agg backend: what every figure needs, so `render` calls it before
  any loading or evaluation.

  Raises:
    ValueError: (one line) matplotlib, or one of the modules it needs, cannot be imported.
  """
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:
    missing = getattr(e, "name", None)
    why = ("is not installed" if missing in (None, "matplotlib")
           else f"cannot be imported ({missing}: {e})")
    raise ValueError(f"capsjax viz draws with matplotlib, which {why}; "
                     "pip install 'capsjax[plot]'.") from None
  return plt


def _suptitle(fig, title: str, fontsize: float = 9) -> None:
  """`title` over `fig`, wrapped to the figure's width (a narrow figure does not clip it)."""
  fig.suptitle(wrap_title(title, fig.get_figwidth(), fontsize), fontsize=fontsize)


def _save(plt, fig, path: Path, title: str, dpi: int = 110) -> None:
  _suptitle(fig, title)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def _show(ax, image: np.ndarray, **kwargs) -> None:
  """`image` [H, W, C] or [H, W]: uint8 0..255 or float in [0, 1] (`capsjax.nn.inputs.to_float`);
  float values outside [0, 1] (a standardised input, `capsjax.data.augment.cifar10`) are
  stretched from their own minimum to their maximum."""
  image = to_float(np.asarray(image))
  low, high = float(image.min()), float(image.max())
  if low < 0 or high > 1:
    image = (image - low) / max(high - low, 1e-6)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  ax.imshow(image, cmap="gray", vmin=0, vmax=1, **kwargs)
  ax.set_xticks([])
  ax.set_yticks([])


def draw_reconstructions(images, result: TestSetPass, indices, path: Path, title: str) -> None:
  """Fig. 3: the test images `images[indices]` above their reconstructions, titled with the
  true and predicted class (red: misclassified), saved as PNG `path`.

  Raises:
    ValueError: matplotlib is not installed.
  """
  plt = _pyplot()
  n = len(indices)
  fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.9), squeeze=False)
  for col, i in enumerate(indices):
    wrong = result.labels[i] != result.predictions[i]
    _show(axes[0, col], images[i])
    _show(axes[1, col], result.reconstructions[i])
    axes[0, col].set_title(f"true {result.labels[i]}\npred {result.predictions[i]}", fontsize=8,
                           color="red" if wrong else "black")
  axes[0, 0].set_ylabel("input", fontsize=8)
  axes[1, 0].set_ylabel("reconstruction", fontsize=8)
  _save(plt, fig, path, title)


def draw_perturbations(grids: dict[int, np.ndarray], path: Path, title: str,
                       offsets=OFFSETS) -> None:
  """Fig. 4: one mosaic per class of `grids` {class: `perturbations` output [D, len(offsets),
  H, W, C]}, one row per capsule dimension, saved as PNG `path`.

  Raises:
    ValueError: matplotlib is not installed.
  """
  plt = _pyplot()
  cols = min(len(grids), 5)
  rows = -(-len(grids) // cols)
  dims, steps, h, w = next(iter(grids.values())).shape[:4]
  # Each decoded image at PERTURBATION_SCALE times its size (a 28x28 digit: 56 px), so a change
  # of stroke is visible; the panels are placed in pixels, with room for their labels.
  scale, dpi = PERTURBATION_SCALE, 100
  image_w, image_h = scale * (steps * (w + 1) - 1), scale * (dims * (h + 1) - 1)
  left, right, top, bottom = 48, 12, 24, 22  # px around each panel: dim labels, title, offsets
  panel_w, panel_h = left + image_w + right, top + image_h + bottom
  width = cols * panel_w / dpi
  title = wrap_title(title, width, 12)
  title_h = 20 * (title.count("\n") + 1) + 14  # px above the panels for the suptitle
  fig_w, fig_h = cols * panel_w, rows * panel_h + title_h
  fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi))
  for n, (k, grid) in enumerate(grids.items()):
    x0 = (n % cols) * panel_w + left
    y0 = fig_h - title_h - (n // cols + 1) * panel_h + bottom
    ax = fig.add_axes((x0 / fig_w, y0 / fig_h, image_w / fig_w, image_h / fig_h))
    _show(ax, mosaic(grid), interpolation="nearest")
    ax.set_xticks([j * (w + 1) + w / 2 for j in range(len(offsets))])
    ax.set_xticklabels([f"{x:+.2f}" for x in offsets], fontsize=6.5)
    ax.set_yticks([d * (h + 1) + h / 2 for d in range(grid.shape[0])])
    ax.set_yticklabels([f"dim {d}" for d in range(grid.shape[0])], fontsize=7)
    ax.tick_params(length=0, pad=2)
    ax.set_title(f"digit {k}", fontsize=9, pad=4)
  fig.suptitle(title, fontsize=12, y=1 - 6 / fig_h, va="top")
  _save_grey(plt, fig, path, dpi)


def _save_grey(plt, fig, path: Path, dpi: int) -> None:
  """`fig` as PNG `path`, in one grey channel where it has no colour (a third of RGBA's size)."""
  import io

  from PIL import Image

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  image = Image.open(buffer)
  rgba = np.asarray(image)
  if (rgba.ndim == 3 and rgba.shape[-1] == 4 and np.all(rgba[..., 3] == 255)
      and np.all(rgba[..., :1] == rgba[..., 1:3])):
    image = image.convert("L")
  image.save(path, format="png", optimize=True)


def draw_routing(image, maps: np.ndarray, cls: int, label: int, type_coupling: np.ndarray,
                 path: Path, title: str) -> None:
  """The routing figure: test `image` (true class `label`, predicted `cls`), its couplings c_ij
  to class `cls` as `maps` [types, OH, OW] (`coupling_map`), and `type_coupling` [types, K]
  (`coupling_by_type`, averaged over the test set), saved as PNG `path`.

  Raises:
    ValueError: matplotlib is not installed.
  """
  plt = _pyplot()
  types = maps.shape[0]
  tiles_per_row = 8
  tile_rows = -(-types // tiles_per_row)
  padded = np.full((tile_rows * tiles_per_row, *maps.shape[1:]), np.nan)
  padded[:types] = maps
  sheet = mosaic(padded.reshape(tile_rows, tiles_per_row, *maps.shape[1:], 1), fill=np.nan)
  k = type_coupling.shape[1]
  uniform = 1 / k
  fig = plt.figure(figsize=(15, 4.8))
  grid = fig.add_gridspec(1, 3, width_ratios=[1, 3.2, 2.2])
  ax_img, ax_map, ax_type = (fig.add_subplot(grid[0, i]) for i in range(3))
  _show(ax_img, image)
  ax_img.set_title(f"test image (true {label}, predicted {cls})", fontsize=9)
  # Both maps: white at the uniform coupling 1/K, red above, blue below, on a range symmetric
  # about 1/K at least 1/(2K) wide either side (couplings of 0.5/K..1.5/K at the least), so a
  # near-uniform map looks near-white rather than structured.
  cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.35")

  def colourbar(shown, ax, fraction):
    bar = fig.colorbar(shown, ax=ax, fraction=fraction)
    low, high = shown.get_clim()
    bar.ax.set_ylim(max(low, 0.0), high)  # couplings are >= 0: no negative part of the scale
    bar.ax.axhline(uniform, color="black", lw=0.8)
    bar.ax.tick_params(labelsize=8)

  low, high = centred_range(maps, uniform, 0.5 * uniform)
  shown = ax_map.imshow(sheet, cmap=cmap, vmin=low, vmax=high)
  ax_map.set_xticks([])
  ax_map.set_yticks([])
  ax_map.set_title(wrap_title(
      f"c_ij to class {cls}: {types} primary-capsule types (tiles, type 0 top left) x "
      f"{maps.shape[1]}x{maps.shape[2]} positions; {np.nanmin(maps):.3f}-{np.nanmax(maps):.3f}, "
      f"white: uniform 1/{k}", 3.2 / 6.4 * 15, 9), fontsize=9)
  colourbar(shown, ax_map, 0.03)
  low, high = centred_range(type_coupling, uniform, 0.5 * uniform)
  shown = ax_type.imshow(type_coupling, cmap=cmap, vmin=low, vmax=high, aspect="auto")
  ax_type.set_xlabel("class")
  ax_type.set_ylabel("primary-capsule type")
  ax_type.set_xticks(range(k))
  ax_type.set_title(wrap_title(
      f"mean coupling over the test set: {type_coupling.min():.4f}-{type_coupling.max():.4f} "
      f"(uniform 1/{k} = {uniform:.4g}: white)", 2.2 / 6.4 * 15, 9), fontsize=9)
  colourbar(shown, ax_type, 0.05)
  _suptitle(fig, title, 10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def draw_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
  """The [K, K] `confusion_matrix` (row: true class, column: predicted) as a heat map of the
  off-diagonal counts with every non-zero count written in, saved as PNG `path`.

  Raises:
    ValueError: matplotlib is not installed.
  """
  plt = _pyplot()
  k = matrix.shape[0]
  fig, ax = plt.subplots(figsize=(6.4, 5.6))
  off = matrix.astype(float).copy()
  np.fill_diagonal(off, np.nan)
  shown = ax.imshow(off, cmap="Reds")
  for i in range(k):
    for j in range(k):
      if matrix[i, j]:  # the diagonal is not coloured (white): its counts in black
        colour = "black" if i == j else text_color(shown.cmap(shown.norm(off[i, j])))
        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  errors = int(matrix.sum() - np.trace(matrix))
  ax.set_title(wrap_title(f"{title}\n{errors} errors in {int(matrix.sum())} test images "
                          "(colour: off-diagonal counts)", 5.6, 9), fontsize=9)
  bar = fig.colorbar(shown, ax=ax, fraction=0.046)
  bar.locator = plt.MaxNLocator(integer=True)  # counts: whole numbers on the scale
  bar.update_ticks()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def draw_curves(train: list[dict], test: list[dict], path: Path, title: str) -> None:
  """The training curves of `capsjax.train.metrics.read_records`' records: train loss (log scale; the margin loss
  beside the total where logged) and train/test accuracy in %, saved as PNG `path`.

  Raises:
    ValueError: matplotlib is not installed.
  """
  plt = _pyplot()
  steps = [r["step"] for r in train]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  ax_loss.plot(steps, [r["loss"] for r in train], label="total")
  if train and "margin_loss" in train[0]:
    ax_loss.plot(steps, [r["margin_loss"] for r in train], label="margin")
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("step")
  ax_loss.set_title("train loss (per example)")
  ax_loss.legend()
  shown = [100 * r["train_accuracy"] for r in train]
  ax_acc.plot(steps, shown, label="train (batch)", alpha=0.6)
  if train and "one_correct" in train[0]:  # MultiMNIST: at least one of the two digits right
    ax_acc.plot(steps, [100 * r["one_correct"] for r in train], "--", alpha=0.6,
                label="train, at least one right")
  if test:
    shown += [100 * r["test_accuracy"] for r in test]
    # The final accuracy is said in the legend, which matplotlib places clear of the curves.
    ax_acc.plot([r["step"] for r in test], [100 * r["test_accuracy"] for r in test], "o-",
                label=f"test ({test[-1].get('test_examples', 'all')} examples): final "
                      f"{100 * test[-1]['test_accuracy']:.2f}%")
  # The last half of training decides the scale: 90-100% for MNIST, lower for harder sets.
  late = shown[len(steps) // 2:] or shown
  ax_acc.set_ylim(90 if min(late, default=100) >= 90 else 10 * (min(late) // 10 - 1), 100)
  ax_acc.set_xlabel("step")
  ax_acc.set_title("accuracy (%)")
  ax_acc.grid(alpha=0.3)
  ax_acc.legend(loc="best")
  _suptitle(fig, title, 12)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def draw_pairs(images, labels, panels: PairPanels, indices, path: Path, title: str) -> None:
  """Fig. 5: for each of `indices`, the MultiMNIST pair with its true classes `labels` [N, 2]
  (L), the two predicted classes' reconstructions in red and green (R; red title: wrong) and
  the absent class's reconstruction (*), saved as PNG `path`.

  Raises:
    ValueError: matplotlib is not installed.
  """
  plt = _pyplot()
  n = len(indices)
  fig, axes = plt.subplots(3, n, figsize=(1.15 * n, 4.2), squeeze=False)
  for col, i in enumerate(indices):
    wrong = not panels.correct[i]
    _show(axes[0, col], images[i])
    _show(axes[1, col], overlay(panels.first[i], panels.second[i]))  # RGB: no colour map
    _show(axes[2, col], panels.absent_reconstruction[i])
    axes[0, col].set_title(f"L:({labels[i][0]},{labels[i][1]})", fontsize=8)
    axes[1, col].set_title(f"R:({panels.predicted[i][0]},{panels.predicted[i][1]})", fontsize=8,
                           color="red" if wrong else "black")
    axes[2, col].set_title(f"*{panels.absent[i]}", fontsize=8)
  axes[0, 0].set_ylabel("input", fontsize=8)
  axes[1, 0].set_ylabel("R: red, green", fontsize=8)
  axes[2, 0].set_ylabel("absent class", fontsize=8)
  _save(plt, fig, path, title)


def draw_grid(rows: list[tuple[str, np.ndarray, list[str], list[bool]]], path: Path,
              title: str) -> None:
  """One row of images per (name, images [n, H, W, C], captions, red?) in `rows`."""
  plt = _pyplot()
  cols = max(len(r[1]) for r in rows)
  fig, axes = plt.subplots(len(rows), cols, figsize=(0.95 * cols, 1.25 * len(rows) + 0.4),
                           squeeze=False)
  for r, (name, images, captions, red) in enumerate(rows):
    for c in range(cols):
      ax = axes[r, c]
      if c >= len(images):
        ax.axis("off")
        continue
      _show(ax, images[c])
      ax.set_title(captions[c], fontsize=7, color="red" if red[c] else "black")
    axes[r, 0].set_ylabel(name, fontsize=7)
  _save(plt, fig, path, title)


def dataset_examples(name: str, config, split: str, data_dir, count: int | None,
                     stored_limit: int | None = None, key=None, at_most: bool = False):
  """(inputs float [n, H, W, C], targets) of `count` examples (spread evenly, `datasets.subset`)
  of dataset `name`'s `split` as the network sees them (training: with `key`'s randomness);
  `at_most`: fewer when the set is smaller (else ValueError)."""
  import jax

  from capsjax.data import datasets

  ds = datasets.get(name, split, config)
  stored = ds.load(split, data_dir, stored_limit)
  size = ds.size(split, stored)
  count = min(count, size) if at_most and count is not None else count
  indices = datasets.subset(size, count, f"the {name} {split} set")
  fn = jax.jit(ds.builder(config, split, stored))
  parts = [jax.device_get(fn(key, stored.images, stored.labels, indices[i:i + 500]))
           for i in range(0, len(indices), 500)]
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


# ---- the command ------------------------------------------------------------------------------

def check_figures(names: list[str]) -> list[str]:
  """`names`, unchanged, if every one is in FIGURES.

  Raises:
    ValueError: naming the first unknown figure and listing FIGURES.
  """
  unknown = [n for n in names if n not in FIGURES]
  if unknown:
    raise ValueError(f"unknown figure {unknown[0]!r}; expected some of {', '.join(FIGURES)}.")
  return names


def render(workdir: str, data_dir: str | None, out: str | None = None,
           figures: list[str] | None = None, digit: int | None = None, dims: int | None = None,
           step: int | None = None, test_examples: int | None = None, image: int = 0,
           progress: bool = True, report=print) -> dict[str, Any]:
  """Draws `figures` (default: all that apply to the run) of the checkpoint `step` (default
  newest) of `workdir` into `out` (default WORKDIR/figures), as `capsjax viz` does.

  matplotlib is checked first, before the checkpoint or any data is read.

  Args:
    workdir: a training run's workdir.
    data_dir: TFDS data_dir (None: $TFDS_DATA_DIR, else the one the run recorded); not read
      for `curves` alone.
    out: folder for the PNGs (created); None: WORKDIR/figures.
    figures: some of FIGURES (one that does not apply to the run, e.g. `multimnist` for an
      MNIST run, is skipped, saying why through `report`); None: `applicable_figures`.
    digit: perturbations of this class only; None: one test digit of each class.
    dims: perturb the first `dims` capsule dimensions; None: all.
    step: the checkpoint; None: the newest complete one.
    test_examples: the figures' test examples: N (the first N of a stored set, N spread evenly
      over a built one), "all" (every one: a MultiMNIST run's 10,000,000 pairs, held in
      memory), or None: the number the run recorded (TrainConfig.test_examples, as `capsjax
      eval`; a run that recorded none: its whole test set), a recorded number or a whole built
      set above `VIZ_EXAMPLES` cut to that many (saying so through `report`).
    image: index of the test image the routing figure shows.
    progress: show progress bars.
    report: receives one line per skipped figure (asked for but not applicable, or a run
      without metrics.jsonl) or cut test set.

  Returns:
    {figure: PNG path, or "skipped: <reason>"}.

  Raises:
    ValueError: (one line) bad input: a workdir without checkpoints, an unknown figure, `digit`
      outside the classes, `dims` outside 1..the capsules' dimension count, `test_examples`
      neither a positive integer nor "all", more test examples than the set has, an `image`
      index outside them, an `out` that is not a directory, or matplotlib not importable.
  """
  from capsjax import api
  from capsjax.data import augment, datasets
  from capsjax.train import archs, model_state

  datasets.check_test_examples(test_examples)

  figures = check_figures(list(figures)) if figures else None  # None or []: those that apply
  _pyplot()  # a missing matplotlib: said before the checkpoint, the data or any evaluation
  model = api.load(workdir, step)
  k = model.num_classes
  if digit is not None and not 0 <= digit < k:
    raise ValueError(f"--digit must be a class in 0..{k - 1}, got {digit}.")
  traits = run_traits(model)
  has_capsules = traits.has_capsules
  default_dim = archs.model_options(model.arch.name).get("digit_dim")
  capsule_dim = int(model.settings.get("digit_dim", default_dim)) if has_capsules else None
  if dims is not None and has_capsules and not 1 <= dims <= capsule_dim:
    raise ValueError(f"--dims must be between 1 and {capsule_dim} (the checkpoint's class "
                     f"capsules have {capsule_dim} dimensions), got {dims}.")
  out_dir = Path(out) if out else Path(workdir) / "figures"
  if out_dir.exists() and not out_dir.is_dir():
    raise ValueError(f"--out {str(out_dir)!r} exists and is not a directory.")
  dataset = model.config.dataset
  two_digit = dataset == "multimnist"
  # Not asked for any: those that apply. Asked for: each that does not apply is skipped, saying
  # why, and reads no data.
  figures = applicable_figures(traits) if figures is None else figures
  reasons = {f: skip_reason(f, traits) for f in figures}
  drawn = [f for f in figures if reasons[f] is None]
  needs_data = [f for f in drawn if f not in ("curves", "samples", "affnist")]
  images = labels = None
  if any(f != "curves" for f in drawn):
    # absolute, resolved once: `data_dir`, $TFDS_DATA_DIR, else the one the run recorded
    data_dir = datasets.data_dir_for(datasets.get(dataset, None, model.config), data_dir,
                                     model_state.recorded_data_dir(workdir))
  if needs_data:
    if test_examples is None:  # the run's own number (as `capsjax eval`), at most VIZ_EXAMPLES
      count = model.config.test_examples
      ds = datasets.get(dataset, "test", model.config)
      if count is None and not ds.host_batches:  # the whole of a built set: its size
        count = ds.size("test", ds.load("test", data_dir, None))
      if count is not None and count > VIZ_EXAMPLES:
        report(f"drawing from {VIZ_EXAMPLES:,} of the run's {count:,} test examples "
               "(--test-examples N or all for more).")
        count = VIZ_EXAMPLES
    else:
      count = None if test_examples == "all" else test_examples
    images, targets = dataset_examples(dataset, model.config, "test", data_dir, count,
                                       None if two_digit else count)
    labels = targets[0] if two_digit else targets
    if not 0 <= image < len(images):
      raise ValueError(f"--image must be a test index in 0..{len(images) - 1}, got {image}.")
  out_dir.mkdir(parents=True, exist_ok=True)
  name = f"{Path(workdir).name} ({model.arch.name}, step {model.step})"
  one_label = [f for f in needs_data if f in _ONE_LABEL]
  result = run_test_set(model, images, labels, progress) if one_label else None
  done: dict[str, Any] = {}

  def skip(fig: str, why: str) -> None:
    done[fig] = f"skipped: {why}"
    report(f"{fig}: skipped, {why}.")

  for fig in figures:
    path = out_dir / f"{fig}.png"
    if reasons[fig] is not None:
      skip(fig, reasons[fig])
      continue
    if fig == "multimnist":
      panels = pair_panels(model, images, labels, progress)
      chosen = np.concatenate([np.flatnonzero(panels.correct)[:8],
                               np.flatnonzero(~panels.correct)[:4]])
      accuracy = float(np.mean(panels.correct))
      draw_pairs(images, labels, panels, chosen, path,
                 f"{name}: MultiMNIST test pairs (Fig. 5); R: the two longest capsules decoded "
                 f"in red and green (red title: wrong); *: an absent class decoded; "
                 f"{accuracy:.1%} of {len(labels)} pairs right")
    elif fig == "samples":
      rows = _sample_rows(dataset, model.config, data_dir)
      draws = sum(row[0].startswith("train,\nstep") for row in rows)
      record = datasets.get(dataset, None, model.config)
      about = (f"training augmentation {model.config.augmentation!r}: "
               f"{augment.describe(model.config.augmentation)}" if record.uses_augmentation
               else record.description).replace("max_shift",
                                                 f"max_shift = {model.config.max_shift}")
      draw_grid(rows, path, f"{dataset} ({about}): examples as the "
                            "network sees them" + ("; the training rows: the same examples as "
                                                   "built at training steps 0 and 1" * (draws > 1)))
    elif fig == "affnist":
      warped, truth = dataset_examples("affnist_style", model.config, "test", data_dir, 32)
      predicted = model.predict(warped).classes
      draw_grid([(f"test\n{i * 16}-{i * 16 + 15}", warped[i * 16:(i + 1) * 16],
                  [f"{t} -> {p}" for t, p in zip(truth[i * 16:], predicted[i * 16:(i + 1) * 16])],
                  list(truth[i * 16:(i + 1) * 16] != predicted[i * 16:(i + 1) * 16]))
                 for i in range(2)], path,
                f"{name}: affNIST-style test examples, true -> predicted (red: wrong)")
    elif fig == "reconstructions":
      if result.reconstructions is None:
        skip(fig, skip_reason(fig, run_traits(model)) or f"arch {model.arch.name!r} has no decoder")
        continue
      draw_reconstructions(images, result, pick_examples(result.labels, result.predictions),
                           path, f"{name}: test images (top) and reconstructions (bottom); red: "
                                 "misclassified")
    elif fig == "perturbations":
      if result.capsules is None:
        skip(fig, f"arch {model.arch.name!r} has no capsules")
        continue
      chosen = digit_examples(result.labels, result.predictions,
                              range(k) if digit is None else [digit])
      grids = {c: perturbations(model, result.capsules[i], c, dims=dims)
               for c, i in chosen.items()}
      draw_perturbations(grids, path, f"{name}: each row one capsule dimension moved by "
                                      "-0.25..+0.25 (step 0.05)")
    elif fig == "routing":
      grid = primary_grid(model)
      if result.type_coupling is None or grid is None:
        skip(fig, f"arch {model.arch.name!r} has no routing")
        continue
      one = model.outputs(images[image:image + 1], processed=True)
      cls = int(np.argmax(one.scores[0]))
      draw_routing(images[image], coupling_map(one.couplings[0], grid, cls), cls,
                   int(labels[image]), result.type_coupling, path,
                   f"{name}: routing ({_routing_phrase(model.config)})")
    elif fig == "confusion":
      draw_confusion(confusion_matrix(result.labels, result.predictions, k), path,
                     f"{name}: confusion matrix")
    elif fig == "curves":
      metrics = Path(workdir) / "metrics.jsonl"
      if not metrics.is_file():
        skip(fig, f"{metrics} does not exist")
        continue
      from capsjax.train.metrics import read_records

      train, test = read_records(metrics)
      if not train:
        skip(fig, f"{metrics} has no training records")
        continue
      draw_curves(train, test, path, f"{name}: training curves")
    done[fig] = str(path)
  return done


def _sample_rows(dataset: str, config, data_dir) -> list:
  """`samples`: the same 12 training examples built with the data keys of training steps 0 and
  1 (two draws of the set's randomness, e.g. MNIST's shifts) and 12 test examples; a set whose
  examples do not depend on the step's key (MultiMNIST's pairs) has one training row. Each row is
  named by what it shows."""
  from capsjax.core import streams
  from capsjax.data import datasets

  rows = []
  base = streams.run_keys(config.seed)
  for split, key, name in (("train", streams.at_step(base, 0).data, "train,\nstep 0's draw"),
                           ("train", streams.at_step(base, 1).data, "train,\nstep 1's draw"),
                           ("test", None, "test")):
    if split not in datasets.get(dataset, None, config).splits:
      continue
    x, y = dataset_examples(dataset, config, split, data_dir, 12, key=key,
                            stored_limit=None if dataset == "multimnist" else 12, at_most=True)
    y = y[0] if isinstance(y, tuple) else y
    if rows and rows[-1][0].startswith(split) and np.array_equal(rows[-1][1], x):
      rows[-1] = (f"{split},\nevery step", *rows[-1][1:])  # the key is not used
      continue
    captions = [",".join(map(str, np.atleast_1d(t))) for t in y]
    rows.append((name, x, captions, [False] * len(x)))
  return rows
