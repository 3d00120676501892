"""Trained models from Python: `capsjax.load(workdir)` and `capsjax.fit(...)`.

    model = capsjax.load("runs/quick")              # newest complete checkpoint
    pred = model.predict(images)                    # uint8 or float in [0, 1], [B, 28, 28, 1]
    pred.classes, pred.scores, pred.capsules, pred.reconstructions
    pred.confident                                  # [B] bool: a clear winner (CONFIDENT_*)
    model.predict(["digit.png", "photo.jpg"])      # pictures, converted as `capsjax predict` does

    capsjax.fit("quick", "runs/notebook", data_dir="../shared/tensorflow_datasets", max_steps=200)

    model = capsjax.load_pretrained("efficient_mnist")  # shipped with capsjax, no training
    model.predict(["my_digit.png"]).classes
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from capsjax import images as images_lib
from capsjax.infra import pretrained as pretrained_lib
from capsjax.data import arrays as arrays_lib
from capsjax.data import augment, storage
from capsjax.nn.objective import Outputs
from capsjax.train import archs, loop, model_state, presets, steps
from capsjax.train import config as config_lib


# When a prediction is `confident` (`Prediction.confident`, the `confident` key of `capsjax
# predict`): its top score is nearer the length a present class is trained to reach, m+ = 0.9 of
# the margin loss (Eq. 4), than an absent one's, m- = 0.1 (so >= 0.5, halfway), and beats the
# runner-up by >= 0.5. Not m+ itself: m+ is where the margin loss stops pushing a present class, so
# correct answers' lengths gather just under it, and most of them would not count (the measured
# figures, and the other thresholds tried: docs/results.md, "Predict on photos").
CONFIDENT_SCORE = 0.5
CONFIDENT_GAP = 0.5


class Prediction(NamedTuple):
  """What a trained network says about a batch of B images.

  Attributes:
    classes: [B] int, the highest-scoring class.
    scores: [B, K] class scores: capsule lengths |v_k|, or the rule's activations (em,
      inverted_dot_product); a network without capsules: its softmax probabilities.
    capsules: [B, K, D] the DigitCaps v_k (None for a network without capsules).
    reconstructions: [B, H, W, C] in [0, 1], decoded from the predicted class's capsule (None
      for a network without a decoder).
  """

  classes: np.ndarray
  scores: np.ndarray
  capsules: np.ndarray | None
  reconstructions: np.ndarray | None

  @property
  def confident(self) -> np.ndarray:
    """[B] bool: a clear winner: the top score is at least CONFIDENT_SCORE (0.5, halfway between
    the margin loss's m- = 0.1 and m+ = 0.9, Eq. 4) and beats the second-highest by at least
    CONFIDENT_GAP (0.5).

    Scores are capsule lengths, not probabilities: they need not sum to 1, and several classes
    (or none) can score high. A picture that is no digit, or that looks like two, usually fails
    this test; so do most wrong answers (measured figures: docs/results.md, "Predict on photos").
    """
    top_two = np.sort(np.asarray(self.scores), -1)[..., ::-1][..., :2]
    runner_up = top_two[..., 1] if top_two.shape[-1] > 1 else np.zeros_like(top_two[..., 0])
    return (top_two[..., 0] >= CONFIDENT_SCORE) & (top_two[..., 0] - runner_up >= CONFIDENT_GAP)


class TrainedModel:
  """A network restored from a workdir, with the config and settings it was trained with.

  Made by `load`. `outputs` and `predict` run on numpy batches of any size.

  Attributes:
    step: the checkpoint's global step.
    config: the run's TrainConfig, as this version reads it.
    settings: the network's recorded settings (arch, input_shape, num_classes, ...).
    arch: the network's `capsjax.train.archs.Arch`.
    batch_size: images per compiled batch.
    input_shape: (H, W, C) the network takes.
    num_classes: K.
    record: a pretrained model's record (`capsjax.infra.pretrained.read`: accuracy, date, source);
      None for a model loaded from a workdir.
    class_names: the name of each class, in label order, as the training data named them (a
      folder's sub-folders, a TFDS set's label names); None: unnamed (older runs).
    picture_shape: (H, W, C) of the images `predict` takes: the training set's stored images
      (CIFAR-10: 32x32x3), which the run's test-time processing (`capsjax.data.augment`; CIFAR-10:
      the centre 24x24 crop, standardised) turns into the network's `input_shape`; the same as
      `input_shape` for a run without one.
  """

  record: dict[str, Any] | None = None

  def __init__(self, graphdef, state, meta: dict[str, Any], batch_size: int = 100):
    self.graphdef, self.state = graphdef, state
    self.step = int(meta["step"])
    self.config = model_state.config_from_saved(meta["config"], report=lambda _: None)
    self.settings = dict(meta["model"])
    names = meta.get("class_names")
    self.class_names: tuple[str, ...] | None = tuple(names) if names else None
    self.arch = archs.of_settings(self.settings)
    self.batch_size = batch_size
    model = nnx.merge(graphdef, state)
    self.input_shape: tuple[int, int, int] = model.input_shape
    self.num_classes: int = model.num_classes
    test = augment.preprocessing(self.config).test
    stored = meta.get("stored_shape") if test is not None else None
    self.picture_shape: tuple[int, int, int] = tuple(stored or self.input_shape)
    self._network_outputs = steps.make_outputs_step(graphdef, self.arch.outputs)
    self._outputs = self._network_outputs if test is None else steps.make_outputs_step(
        graphdef, lambda net, images: self.arch.outputs(net, test(images, None)[0]))

  def class_name(self, label: int) -> str:
    """The name of class `label` (its number as text when the run recorded no names)."""
    return self.class_names[label] if self.class_names else str(label)

  @property
  def model(self):
    """The restored network (an NNX module: `capsjax.CapsNet` or `capsjax.nn.cnn.BaselineCNN`)."""
    return nnx.merge(self.graphdef, self.state)

  def read_image(self, source, name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """One picture (a file's path, a PIL image, or a grey / RGB / RGBA array of any size) made
    into this network's input exactly as `capsjax predict` converts a file:
    `capsjax.images.read_image` with the network's input shape and training dataset.

    Returns:
      (uint8 [H, W, C], the steps done).

    Raises:
      ValueError: (one line naming the picture) what `capsjax.images.read_image` raises.
    """
    return images_lib.read_image(source, self.picture_shape, dataset=self.config.dataset,
                                 name=name)

  def _pictures(self, images) -> list | None:
    """The pictures in `images` to convert (paths, PIL images, arrays of another shape), or
    None for an array (or nested lists) that is a batch or one image already."""
    picture = (str, os.PathLike, Image.Image)
    if isinstance(images, picture):
      return [images]
    if isinstance(images, (list, tuple)) and any(isinstance(x, picture) for x in images):
      return list(images)
    if isinstance(images, (list, tuple)) and images and all(
        isinstance(x, np.ndarray) for x in images) and any(
        x.ndim == 2 or (x.ndim == 3 and x.shape != tuple(self.picture_shape)) for x in images):
      return list(images)  # arrays of pictures (of any sizes), not one batch
    array = np.asarray(images) if not isinstance(images, np.ndarray) else images
    size = int(np.prod(self.picture_shape))
    if array.ndim == 2 and array.shape[1] == size and array.shape[0] != self.picture_shape[0]:
      raise ValueError(f"images of shape {array.shape} look like a batch of flattened images; "
                       f"reshape them to [B, {', '.join(map(str, self.picture_shape))}].")
    if array.ndim == 2 or (array.ndim == 3 and array.shape != self.picture_shape
                           and array.shape[-1] in (1, 3, 4)):
      return [array]
    return None

  def _batch(self, images) -> np.ndarray:
    """`images` as a checked [B, H, W, C] batch (one [H, W, C] image becomes B = 1; pictures
    converted by `read_image`)."""
    pictures = self._pictures(images)
    if pictures is not None:
      converted, problems = [], []
      for i, source in enumerate(pictures):
        name = None if isinstance(source, (str, os.PathLike)) else (
            "image" if len(pictures) == 1 else f"image {i}")
        try:
          converted.append(self.read_image(source, name)[0])
        except ValueError as e:
          problems.append(str(e))
      if problems:
        raise ValueError(" ".join(problems) if len(problems) == 1 else
                         f"{len(problems)} of {len(pictures)} pictures cannot be classified: "
                         + " ".join(problems))
      return np.stack(converted)
    images = np.asarray(images)
    if images.ndim == len(self.picture_shape):
      images = images[None]
    if images.ndim != 4 or images.shape[1:] != self.picture_shape:
      shape = ", ".join(map(str, self.picture_shape))
      raise ValueError(f"images must have shape [B, {shape}] or [{shape}], got {images.shape}.")
    storage.check_batch(images, np.zeros(len(images), np.int32), self.num_classes)
    return images

  def outputs(self, images, *, processed: bool = False) -> Outputs:
    """The network's test-time outputs (numpy; see `capsjax.nn.objective.Outputs`: scores, capsules,
    reconstructions, routing couplings) of `images` as for `predict` (pictures included).

    `processed`: `images` are the network's inputs already, float [B, *input_shape] as the
    dataset's builder makes them (after the run's test-time processing, so of any range: what
    `capsjax viz` draws); only their shape is checked.
    """
    if processed:
      images = np.asarray(images, np.float32)
      if images.ndim != 4 or images.shape[1:] != self.input_shape:
        raise ValueError(f"processed images must have shape [B, "
                         f"{', '.join(map(str, self.input_shape))}], got {images.shape}.")
    else:
      images = self._batch(images)
    step = self._network_outputs if processed else self._outputs
    parts = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      padded = np.concatenate([chunk, np.zeros((self.batch_size - len(chunk), *chunk.shape[1:]),
                                               chunk.dtype)])
      parts.append([None if x is None else np.asarray(x)[:len(chunk)]
                    for x in step(self.state, padded)])
    return Outputs(*(None if columns[0] is None else np.concatenate(columns)
                           for columns in zip(*parts)))

  def predict(self, images) -> Prediction:
    """Classifies `images`.

    `images` is either

    - the network's input already: [B, H, W, C] or one [H, W, C] (the model's `picture_shape`),
      uint8 (0..255, read as /255) or float in [0, 1] (`capsjax.nn.inputs`), used as it is; or
    - pictures: a file's path (str or PathLike), a PIL image, a grey [H', W'] array, or an RGB
      [H', W', 3] (RGBA [H', W', 4], grey [H', W', 1]) array of another shape, uint8 or float in
      [0, 1]; or a list of them. Each is converted exactly as `capsjax predict` converts a file
      (`read_image`: background from the border, light ink on black, contrast stretched, scaled
      to MNIST's 20x20 box and centred by its centre of mass).

    Runs in fixed-size batches (the last one padded), so any B compiles once.

    Raises:
      ValueError: (one line) another shape, another dtype (int32, bool, ...: named) or float
        values outside [0, 1]; for pictures, every one that cannot be read or converted (a
        missing file, a blank picture, one too small, ...), each named.
    """
    out = self.outputs(images)
    return Prediction(np.argmax(out.scores, -1), out.scores, out.capsules, out.reconstructions)

  def decode(self, capsules, classes) -> np.ndarray:
    """CapsNet's decoder (§4.1) on class capsules [B, K, D] masked to `classes` [B].

    Returns:
      [B, H, W, C] reconstructions in [0, 1], numpy.

    Raises:
      ValueError: the network has no decoder (the baseline CNN).
    """
    decode = getattr(self.model, "decode", None)
    if decode is None:
      raise ValueError(f"arch {self.arch.name!r} has no decoder.")
    return np.asarray(decode(jnp.asarray(capsules, jnp.float32), jnp.asarray(classes)))


def load(workdir: str | os.PathLike, step: int | None = None, *,
         batch_size: int = 100) -> TrainedModel:
  """The model of checkpoint `step` (default: the newest complete one) of `workdir`, ready to
  `predict`.

  Args:
    workdir: a training run's workdir.
    step: the checkpoint to load; None: the newest complete one.
    batch_size: images per compiled batch of `TrainedModel.outputs` / `predict`.

  Raises:
    ValueError: (one line) a workdir without checkpoints, a missing step, or a damaged
      checkpoint (`CheckpointError`).
  """
  graphdef, state, meta = model_state.load_for_eval(workdir, step, report=lambda _: None)
  return TrainedModel(graphdef, state, meta, batch_size=batch_size)


def load_pretrained(name: str, *, batch_size: int = 100,
                    directory: str | os.PathLike | None = None) -> TrainedModel:
  """A pretrained network shipped with capsjax (`capsjax.infra.pretrained.available()`), ready to
  `predict`; nothing is trained or downloaded.

  `efficient_mnist`: Efficient-CapsNet (Mazzia et al. 2021) trained on MNIST with the
  `efficient_mnist_cpu` preset, shipped without its decoder (the classifier's 161,824
  parameters and its batch-norm statistics), so its predictions have no reconstructions. Its
  record (`TrainedModel.record`: accuracy on the MNIST test set, date, machine, how it was made)
  is also in docs/results.md.

  Args:
    name: a shipped model's name.
    batch_size: images per compiled batch of `TrainedModel.outputs` / `predict`.
    directory: read NAME.json and NAME.npz from here instead (None: the shipped ones;
      `experiments/export_pretrained.py` writes such files).

  Raises:
    ValueError: (one line) an unknown name (the shipped ones are listed) or unreadable files.
  """
  record, arrays = pretrained_lib.read(
      name, pretrained_lib.DIRECTORY if directory is None else directory)
  config = model_state.config_from_saved(record["config"], report=lambda _: None)
  graphdef, state = nnx.split(model_state.create_model(record["model"], config))
  state, missing = pretrained_lib.fill(state, arrays, name)
  if missing:
    raise ValueError(f"pretrained model {name!r} lacks {', '.join(missing[:3])}; reinstall "
                     "capsjax.")
  model = TrainedModel(graphdef, state, {"step": record["step"], "config": record["config"],
                                         "model": record["model"]}, batch_size=batch_size)
  model.record = record
  return model


def fit(config: "str | config_lib.TrainConfig", workdir: str | os.PathLike,
        data_dir: str | os.PathLike | None = None, *, progress: bool = True,
        tensorboard: bool = False, train_examples: int | None = None,
        test_examples: int | None = None, train=None, test=None,
        class_names: list[str] | None = None, **overrides) -> dict[str, Any]:
  """Trains (or resumes) in `workdir` through the same loop as `capsjax train`.

  On your own NumPy arrays (a notebook's data):

      capsjax.fit("quick", "runs/mine", train=(x_train, y_train), test=(x_test, y_test),
                  class_names=["cat", "dog"], max_steps=500)

  The arrays are checked, written to WORKDIR/arrays.npz (`capsjax.data.arrays`) and trained on
  as dataset "arrays:WORKDIR/arrays.npz", so `capsjax eval`, `viz` and a resume read the same
  examples; the network's input size and class count follow from them.

  Args:
    config: a preset name ("quick", "paper") or a TrainConfig.
    workdir: as for the CLI.
    data_dir: as for the CLI (None: $TFDS_DATA_DIR); not read when training on arrays, an
      image folder or another set that reads no data dir.
    progress: as `capsjax train` without --no-progress.
    tensorboard: as `capsjax train` with --tensorboard.
    train_examples: use only the first N stored training examples (smoke runs; MultiMNIST: N
      digits, N x 1,000 pairs); recorded as TrainConfig.train_examples, so a resume that
      leaves it out is told that the data changed.
    test_examples: evaluate on N test examples (the first N of a stored set, N spread evenly
      over a built one); recorded with the run as TrainConfig.test_examples, so `capsjax eval`
      and `capsjax viz` of the run use the same number unless told otherwise. None: the
      config's (the preset's).
    train: (images, labels) to train on: images uint8 [N, H, W, C] (0..255) or float in
      [0, 1] ([N, H, W]: grey), labels [N] integer classes 0..K-1. With `test`; None: the
      config's dataset.
    test: (images, labels) to evaluate on, as `train` (the same H, W, C and dtype).
    class_names: the K class names, in label order (default: K = the largest label + 1,
      unnamed).
    **overrides: TrainConfig fields, e.g. max_steps=200, routing="uniform".

  Returns:
    The final test metrics, as `capsjax train` prints them (`capsjax.train.loop.train`).

  Raises:
    ValueError: an unknown preset or TrainConfig field, arrays of disagreeing lengths, shapes or
      dtypes (nothing is written then), arrays other than those a run in `workdir` trained on,
      or what `capsjax.train.loop.train` raises (with TrainingInterrupted, NonFiniteError and
      StorageError).
  """
  if isinstance(config, str):
    config = presets.get(config)
  fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown TrainConfig field(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(sorted(fields))}.")
  if "epochs" in overrides and "max_steps" not in overrides:
    overrides["max_steps"] = None  # epochs alone sets the run length, as on the CLI
  if test_examples is not None:
    overrides["test_examples"] = test_examples  # recorded: eval and viz default to it
  if train_examples is not None:
    overrides["train_examples"] = train_examples  # recorded: a resume without it is told
  if train is not None or test is not None or class_names is not None:
    overrides["dataset"] = arrays_lib.PREFIX + str(_write_arrays(workdir, train, test,
                                                                 class_names))
  config = dataclasses.replace(config, **overrides)
  return loop.train(config, workdir, data_dir, progress=progress, tensorboard=tensorboard)


def _as_split(pair, what: str, num_classes: int, class_names) -> storage.Split:
  """(images, labels) as a checked `storage.Split` (grey [N, H, W] given a channel)."""
  if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
    raise ValueError(f"{what} must be a pair (images, labels), got {type(pair).__name__}.")
  images, labels = np.asarray(pair[0]), np.asarray(pair[1])
  if images.ndim == 3:
    images = images[..., None]
  if np.issubdtype(images.dtype, np.floating):
    images = images.astype(np.float32)
  try:
    return storage.Split(images, labels, num_classes, class_names)
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from e


def _write_arrays(workdir, train, test, class_names):
  """Checks `capsjax.fit`'s arrays and writes them to WORKDIR/arrays.npz (unless the same are
  there already); returns that path. ValueError (one line, nothing written) for bad arrays or
  other arrays than a run in the workdir trained on."""
  if train is None or test is None:
    raise ValueError(f"give both train and test arrays (got {'test' if train is None else 'train'} "
                     "only).")
  labels = [np.asarray(pair[1]) for pair in (train, test)
            if isinstance(pair, (tuple, list)) and len(pair) == 2]
  top = max((int(l.max()) for l in labels if l.size and np.issubdtype(l.dtype, np.integer)),
            default=1)
  num_classes = len(class_names) if class_names is not None else max(top + 1, 2)
  names = None if class_names is None else tuple(class_names)
  splits = [_as_split(pair, what, num_classes, names) for pair, what in
            ((train, "train"), (test, "test"))]
  arrays_lib.check_pair(*splits)
  path = Path(workdir).expanduser().absolute() / "arrays.npz"
  if path.is_file():
    same = True
    try:
      same = all(_same_split(arrays_lib.read(path, split), given)
                 for split, given in zip(("train", "test"), splits))
    except ValueError:
      same = False
    if same:
      return path
    if (path.parent / "checkpoints").is_dir():
      raise ValueError(f"workdir {str(path.parent)!r} holds a run trained on other arrays "
                       f"({str(path)!r}); use a new workdir for these.")
  return arrays_lib.write(path, *splits)


def _same_split(a: storage.Split, b: storage.Split) -> bool:
  return (a.images.dtype == b.images.dtype and np.array_equal(a.images, b.images)
          and np.array_equal(a.labels, b.labels) and a.num_classes == b.num_classes
          and a.class_names == b.class_names)
