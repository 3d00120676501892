"""Training configuration: `TrainConfig`, everything a run depends on, and its checks.

The named presets are in `capsjax.train.presets`."""

import dataclasses
import math
from typing import Any

from capsjax import routing as routing_lib
from capsjax.core.kinds import kind_name, same_kind
from capsjax.data import augment, datasets
from capsjax.data.pipeline import PIPELINES
from capsjax.infra import pretrained
from capsjax.train import archs


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run depends on. Presets: `capsjax.train.presets.get(name)`.

  The defaults are the paper's MNIST settings (batch 128, Adam 1e-3 decayed x0.96 per 2,000
  steps, 3 routing iterations, shifts of up to 2 px, reconstruction weight 0.0005) with a
  staircase decay; the official code's continuous decay floored at 1e-6 is the `paper` preset's.
  A run length (`epochs` or `max_steps`) must be set.

  Attributes:
    dataset: a name from `capsjax.data.datasets.available("train")`, or a user's own data:
      "tfds:NAME[:VERSION]", "folder:PATH" or "arrays:PATH" (`capsjax.data.datasets`).
    image_size: [H, W] to bring a user's own images to (tfds: and folder: sets); None: their
      own size (a folder: the most common one).
    test_fraction: the fraction of each class a folder without train/ and test/ holds out for
      testing (None: 0.1, `capsjax.data.folder`).
    arch: the network, a name from `capsjax.train.archs.available()` (capsnet, baseline).
    batch_size: global examples per step.
    epochs: run length in epochs of full batches; `max_steps` wins when both are set.
    max_steps: run length in steps.
    learning_rate: Adam's initial learning rate.
    decay_rate: learning rate x decay_rate ** (step / decay_steps).
    decay_steps: steps per decay_rate factor.
    decay_staircase: round the exponent down (False: continuous, as the official code).
    min_learning_rate: floor of the learning rate (the official code: 1e-6).
    max_shift: random shift augmentation, pixels along each axis (§5; 0: none).
    augmentation: the training augmentation of MNIST-like sets, a name from
      `capsjax.data.augment.available()` ("shift": max_shift above; "efficient_capsnet").
    recon_weight: weight of the summed squared reconstruction error (0.0005, §4.1).
    routing: a rule name from `capsjax.routing.available()`, or MODULE:NAME (a plugin).
    routing_iters: routing iterations r.
    model: further keyword arguments of the network (e.g. {"digit_dim": 8}).
    routing_options: keyword options of the routing rule.
    vote_chunk_size: dynamic routing only: input capsules per chunk of votes (less memory).
    plugins: modules imported before the rule is looked up (recorded with the run).
    seed: the run's seed (initialisation, data order, augmentation, dropout).
    log_every: steps between train records in metrics.jsonl.
    eval_every: steps between test evaluations; 0: only at the end.
    eval_batch_size: None: `steps.default_eval_batch_size()` of the backend.
    test_examples: evaluate on this many test examples, spread evenly; None: all.
    train_examples: train on the first N stored training examples only; None: all.
    checkpoint_every: steps between checkpoints (one is always written at the end).
    keep_checkpoints: how many complete checkpoints are kept.
    pipeline: "device", "host" or "auto" (`capsjax.data.pipeline`).
    steps_per_dispatch: training steps per compiled chunk; None: log_every.
    precision: "fp32" or "bf16" (mixed precision, `capsjax.nn.objective.PRECISIONS`).
    devices: data parallelism over this many local devices; None: all.
    pretrained: start from the weights of this shipped pretrained network
      (`capsjax.infra.pretrained.available()`) instead of a fresh initialisation; the run's
      network must be the same (a decoder it was shipped without starts fresh). None: fresh.
  """

  dataset: str = "mnist"
  # A user's own images (tfds:, folder:): brought to [H, W]; a folder without train/ and test/:
  # this fraction of each class held out for testing (None: 0.1).
  image_size: list[int] | None = None
  test_fraction: float | None = None
  arch: str = "capsnet"  # the network: capsjax.train.archs.available() (capsnet, baseline)
  batch_size: int = 128
  epochs: int | None = None  # run length in epochs; max_steps wins when both are set
  max_steps: int | None = None
  learning_rate: float = 1e-3
  # lr * decay_rate ** (step / decay_steps), floored at min_learning_rate; the exponent is
  # rounded down with decay_staircase. The official code: continuous (False), floor 1e-6.
  decay_rate: float = 0.96
  decay_steps: int = 2000
  decay_staircase: bool = True
  min_learning_rate: float = 0.0
  max_shift: int = 2  # random shift augmentation, pixels
  # The training augmentation of MNIST and Fashion-MNIST: capsjax.data.augment.available().
  augmentation: str = "shift"
  recon_weight: float = 0.0005
  routing: str = "dynamic"  # a name from capsjax.routing.available(), or MODULE:NAME (a plugin)
  routing_iters: int = 3
  # Further keyword arguments of the network (CapsNet: capsule sizes, channels, decoder widths,
  # e.g. {"primary_dim": 4, "digit_dim": 8}; baseline: conv_channels, hidden, dropout); unset
  # ones keep the paper's values.
  model: dict[str, Any] = dataclasses.field(default_factory=dict)
  routing_options: dict = dataclasses.field(default_factory=dict)  # keyword options of the rule
  vote_chunk_size: int | None = None  # dynamic routing only: memory-efficient chunked votes
  # Modules imported before the rule is looked up, which register rules (`--plugin MODULE`;
  # routing="MODULE:NAME" adds MODULE here and keeps NAME). Recorded with the run, so eval and
  # resume import them too. Installed packages with a "capsjax.routing" entry point need none.
  plugins: list[str] = dataclasses.field(default_factory=list)
  seed: int = 0
  log_every: int = 20  # steps between train-metric lines (and progress-bar refreshes)
  eval_every: int = 0  # steps between full test-set evaluations; 0 = only at the end
  eval_batch_size: int | None = None  # None: steps.default_eval_batch_size() of the backend
  # Evaluate on this many test examples, spread evenly over the set (`datasets.subset`); None:
  # all (MultiMNIST: 10M pairs).
  test_examples: int | None = None
  # Train on the first N stored training examples only (smoke runs; MultiMNIST: N digits, so
  # N x 1,000 pairs); None: all. Recorded, so a resume that changes it is noted.
  train_examples: int | None = None
  checkpoint_every: int = 1000  # steps between checkpoints; one is always written at the end
  keep_checkpoints: int = 3
  # Training data on the device ("device"), host batches copied per chunk ("host"), or "auto":
  # the device when the split fits in a quarter of its memory (`capsjax.data.pipeline`).
  pipeline: str = "auto"
  # Training steps per dispatch to the device (one compiled loop; their metrics come back in one
  # transfer); None: log_every. Chunks also end at every log, eval and checkpoint step.
  steps_per_dispatch: int | None = None
  # "bf16": convolutions, votes and decoder matmuls in bfloat16; parameters, optimizer state,
  # routing, squash and losses in float32 (capsjax.train.archs.arch.PRECISIONS).
  precision: str = "fp32"
  # Data parallelism over this many local devices (None: all); the batch must split evenly.
  devices: int | None = None
  # Start from a shipped network's weights (capsjax.infra.pretrained.available()); None: fresh.
  pretrained: str | None = None

  def __post_init__(self):
    if isinstance(self.routing, str) and ":" in self.routing:
      # "my_package.my_rules:tempered": import my_package.my_rules, then use rule "tempered".
      module, _, self.routing = self.routing.rpartition(":")
      if isinstance(self.plugins, (list, tuple)) and module not in self.plugins:
        self.plugins = [*self.plugins, module]

  def validate(self) -> "TrainConfig":
    """Checks every setting (and loads `plugins`, so the routing rule can be looked up).

    Returns:
      self, unchanged.

    Raises:
      ValueError: naming the first bad setting: a non-finite or non-positive size or rate, an
        unknown dataset, arch, routing rule, option or pipeline, no run length, a setting of
        another arch changed from its default, or a bad `model` setting.
    """
    positive = ("batch_size", "learning_rate", "decay_steps", "routing_iters", "log_every",
                "checkpoint_every", "keep_checkpoints")
    for name in ("learning_rate", "decay_rate", "min_learning_rate", "recon_weight"):
      value = getattr(self, name)  # finite in float32, the dtype the step computes in
      if isinstance(value, bool) or not isinstance(value, (int, float)) or \
          not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{name} must be a finite number (in float32), got {value!r}.")
    for name in positive:
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
    if not 0 <= self.min_learning_rate <= self.learning_rate:
      raise ValueError(f"min_learning_rate must be in [0, learning_rate = {self.learning_rate}], "
                       f"got {self.min_learning_rate}.")
    for name in ("epochs", "max_steps", "eval_batch_size", "steps_per_dispatch", "devices",
                 "test_examples", "train_examples"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}.")
    archs.compute_dtype(self.precision)
    if self.pipeline not in PIPELINES:
      raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}.")
    if self.epochs is None and self.max_steps is None:
      raise ValueError("set epochs or max_steps (the run length).")
    if not 0 < self.decay_rate <= 1:
      raise ValueError(f"decay_rate must be in (0, 1], got {self.decay_rate}.")
    archs.get(self.arch)
    dataset = datasets.get(self.dataset, "train", self)
    _check_data_options(self, dataset)
    augment.check(self.augmentation)
    if self.pretrained is not None:
      pretrained.check(self.pretrained)
    if self.augmentation != augment.DEFAULT and not dataset.uses_augmentation:
      raise ValueError(f"dataset {self.dataset!r} builds its own training examples and takes no "
                       f"augmentation setting; got augmentation {self.augmentation!r}.")
    _check_arch_settings(self)
    _check_model_settings(self.model, self.arch)
    if not isinstance(self.plugins, (list, tuple)):
      raise ValueError(f"plugins must be a list of module names, got {self.plugins!r}.")
    routing_lib.load_plugins(self.plugins)
    routing_lib.check_options(self.routing, self.routing_options)
    routing_lib.check_vote_chunking(self.routing, self.vote_chunk_size)
    for name in ("max_shift", "eval_every", "recon_weight"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    return self

  def total_steps(self, num_train_examples: int) -> int:
    """Run length in steps (max_steps if set, else epochs of full batches)."""
    if self.max_steps is not None:
      return self.max_steps
    return self.epochs * (num_train_examples // self.batch_size)


_FLOAT32_MAX = 3.4028234663852886e38


def model_options(arch: str = "capsnet") -> dict[str, Any]:
  """{name: default} of the network's arguments that `TrainConfig.model` may set."""
  return archs.model_options(arch)


def _positive_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _check_data_options(config: TrainConfig, dataset) -> None:
  """Raises ValueError (one line) for a data setting the dataset does not take, or a bad
  image_size / test_fraction."""
  for name in ("image_size", "test_fraction"):
    if getattr(config, name) is not None and name not in dataset.options:
      raise ValueError(f"{name} is a setting of a user's own data (tfds:, folder:); dataset "
                       f"{config.dataset!r} does not take it (got {getattr(config, name)!r}).")
  size = config.image_size
  if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                               and all(map(_positive_int, size))):
    raise ValueError(f"image_size must be [H, W], two positive integers, got {size!r}.")
  fraction = config.test_fraction
  if fraction is not None and (isinstance(fraction, bool) or not isinstance(
      fraction, (int, float)) or not 0 < fraction < 1):
    raise ValueError(f"test_fraction must be a number in (0, 1), got {fraction!r}.")


def _check_arch_settings(config: TrainConfig) -> None:
  """Raises ValueError for a setting of another network (e.g. routing for the baseline) that is
  not at its default: it would be silently ignored."""
  defaults = TrainConfig()
  arch = archs.get(config.arch)
  if config.vote_chunk_size is not None and not archs.takes(config.arch, "vote_chunk_size"):
    raise ValueError(f"vote_chunk_size is a setting of arch 'capsnet'; arch {config.arch!r} "
                     f"has no chunked votes (got {config.vote_chunk_size}).")
  own = arch.config_keys
  for other in archs.available():
    for key in archs.get(other).config_keys:
      if key not in own and getattr(config, key) != getattr(defaults, key):
        raise ValueError(f"{key} is a setting of arch {other!r}; arch {config.arch!r} does not "
                         f"use it (got {getattr(config, key)!r}).")


def _check_model_settings(model: dict[str, Any], arch: str = "capsnet") -> None:
  """Raises ValueError for an unknown network setting or a value unlike its default's kind."""
  options = model_options(arch)
  for key, value in model.items():
    if key not in options:
      raise ValueError(f"unknown model setting {key!r}; expected one of {', '.join(options)} "
                       f"(the options of arch {arch!r}).")
    default = options[key]
    if isinstance(default, int) and not isinstance(default, bool) and not _positive_int(value):
      raise ValueError(f"model setting {key} must be a positive integer, got {value!r}.")
    if isinstance(default, (bool, float, str)) and not same_kind(value, default):
      raise ValueError(f"model setting {key} must be {kind_name(default)}, got {value!r}.")
    if isinstance(default, (tuple, list)) and not (
        isinstance(value, (tuple, list)) and value and all(map(_positive_int, value))):
      raise ValueError(f"model setting {key} must be a non-empty list of positive integers, "
                       f"got {value!r}.")
