"""A run's network and optimizer state: created from recorded settings, checked against a
checkpoint's, restored from one.

A run records its network settings (`model_settings`) and config beside every checkpoint; a
resume or `capsjax eval` rebuilds the same network from them (`create_model`, `create_state`),
reads a config written by any earlier version (`config_from_saved`) and restores the weights
(`load_for_eval`). Settings absent from an older checkpoint take their defaults.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flax import nnx

from capsjax import routing as routing_lib
from capsjax.core import streams
from capsjax.core.kinds import kind_name, same_kind
from capsjax.data import storage
from capsjax.infra import pretrained
from capsjax.infra.checkpoint import CheckpointError, Checkpointer
from capsjax.train import archs, steps
from capsjax.train import config as config_lib
from capsjax.train.config import TrainConfig

# Settings that change the network; a checkpoint is only resumable with the same values.
MODEL_KEYS = ("arch", "input_shape", "num_classes", "routing", "routing_iters", "routing_options")


def model_settings(config: TrainConfig, split: storage.Split,
                   input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
  """The network's settings for `config` on a dataset like `split` (recorded with the run):
  arch, input_shape (default: the split's image shape), num_classes, the arch's TrainConfig
  fields and `config.model`."""
  shape = split.images.shape[1:] if input_shape is None else input_shape
  return settings_of(config, shape, int(split.num_classes))


def settings_of(config: TrainConfig, input_shape, num_classes: int) -> dict[str, Any]:
  """`model_settings` for inputs of `input_shape` (H, W, C) and `num_classes` classes."""
  arch = archs.get(config.arch)
  own = {k: getattr(config, k) for k in arch.config_keys}
  return {"arch": arch.name, "input_shape": list(input_shape), "num_classes": int(num_classes),
          **{k: dict(v) if isinstance(v, dict) else v for k, v in own.items()}, **config.model}


# What a run records about itself in WORKDIR/config.json, rewritten at every start: "config"
# (the TrainConfig), "model" (`model_settings`), "data_dir" (absolute) and "total_steps".
RUN_RECORD = "config.json"


def read_run_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """WORKDIR/config.json as a dict; None where there is none or it cannot be read (a run that
  never started, or a damaged file: the checkpoints still decide)."""
  try:
    record = json.loads((Path(workdir).expanduser() / RUN_RECORD).read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def recorded_data_dir(workdir: str | os.PathLike) -> str | None:
  """The data dir the run in `workdir` trained from, if it recorded one that still exists
  (`capsjax eval` and `viz` take it when no --data-dir is given)."""
  record = read_run_record(workdir) or {}
  path = record.get("data_dir")
  return path if isinstance(path, str) and Path(path).is_dir() else None


def create_model(settings: dict[str, Any], config: TrainConfig) -> nnx.Module:
  """A fresh network of recorded `settings` (see `model_settings`), initialised from the "init"
  stream of config.seed (`capsjax.core.streams`)."""
  return archs.of_settings(settings).create(settings, config,
                                           nnx.Rngs(streams.init_rngs_key(config.seed)))


def schedule_args(config: TrainConfig) -> tuple:
  """`steps.make_schedule`'s arguments of `config`."""
  return (config.learning_rate, config.decay_rate, config.decay_steps, config.decay_staircase,
          config.min_learning_rate)


def create_state(settings: dict[str, Any], config: TrainConfig):
  """(graphdef, state) of a fresh (model, nnx.Optimizer) pair seeded by config.seed (the
  training loop then fills a fresh run's model from `config.pretrained`, `start_from`)."""
  model = create_model(settings, config)
  tx = steps.make_optimizer(*schedule_args(config))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return nnx.split((model, optimizer))


def check_pretrained(settings: dict[str, Any], name: str) -> dict[str, np.ndarray]:
  """The arrays of shipped pretrained network `name` (`capsjax.infra.pretrained`), checked to
  be of the network that `settings` describe (whether it has a decoder does not count).

  Raises:
    ValueError: (one line) an unknown name, or another network (each difference named).
  """
  record, arrays = pretrained.read(name)
  shipped = {k: v for k, v in record["model"].items() if k != "reconstruction"}
  mine = {k: v for k, v in settings.items() if k != "reconstruction"}
  diffs = model_mismatches(shipped, mine)
  if diffs:
    raise ValueError(f"pretrained model {name!r} is another network than this run's "
                     f"({'; '.join(diffs)}); train from it with --config "
                     f"{record.get('preset', 'the preset it was trained with')}.")
  return arrays


def start_from(model: nnx.Module, settings: dict[str, Any], name: str) -> None:
  """Sets `model`'s variables to those of shipped pretrained network `name`
  (`capsjax.infra.pretrained`); the ones it was shipped without (a decoder) keep their
  initialisation.

  Raises:
    ValueError: (one line) as `check_pretrained`.
  """
  state, _ = pretrained.fill(nnx.state(model), check_pretrained(settings, name), name)
  nnx.update(model, state)


def setting_default(key: str, arch: str = archs.DEFAULT) -> Any:
  """What a setting absent from an older checkpoint's metadata meant: its default."""
  field = {f.name: f for f in dataclasses.fields(TrainConfig)}.get(key)
  if field is not None and field.default is not dataclasses.MISSING:
    return field.default
  if field is not None and field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return config_lib.model_options(arch).get(key)


def differences(saved: dict[str, Any], now: dict[str, Any], keys) -> list[str]:
  """"name: checkpoint X vs now Y" for each of `keys` that differs (missing = default; model
  options default to those of the dict's own arch)."""
  value = lambda d, k: d[k] if k in d else setting_default(k, d.get("arch", archs.DEFAULT))
  return [f"{k}: checkpoint {value(saved, k)!r} vs now {value(now, k)!r}" for k in sorted(keys)
          if value(saved, k) != value(now, k)]


def model_mismatches(saved: dict[str, Any], settings: dict[str, Any]) -> list[str]:
  """The model settings (MODEL_KEYS and any network option) that differ, one string each.

  `routing_iters` does not count for a one-pass rule (`iterative=False`), which ignores it.
  """
  keys = set(MODEL_KEYS) | set(saved) | set(settings)
  rule = settings.get("routing", setting_default("routing"))
  if saved.get("routing", setting_default("routing")) == rule and rule in routing_lib.available():
    if not routing_lib.info(rule).iterative:
      keys.discard("routing_iters")
  return differences(saved, settings, keys)


# Settings a resumed run may change without leaving the uninterrupted run's path.
FREE_ON_RESUME = ("epochs", "max_steps", "log_every", "eval_every", "eval_batch_size",
                  "test_examples", "checkpoint_every", "keep_checkpoints", "seed", "model",
                  "pipeline", "steps_per_dispatch", "devices")


def changed_on_resume(saved_config: dict[str, Any], config: TrainConfig) -> list[str]:
  """The training settings of `config` that differ from a checkpoint's recorded config, other
  than those a resume may change freely (FREE_ON_RESUME): "name: checkpoint X vs now Y" each."""
  now = dataclasses.asdict(config)
  return differences(saved_config, now, set(now) - set(FREE_ON_RESUME))


def check_resumable(saved: dict[str, Any], settings: dict[str, Any], workdir: Path) -> None:
  """Raises ValueError (one line, naming each difference) unless a checkpoint's recorded model
  settings `saved` describe the same network as `settings` (`model_mismatches`)."""
  diffs = model_mismatches(saved, settings)
  if diffs:
    raise ValueError(f"workdir {str(workdir)!r} holds a checkpoint of a different model ("
                     f"{'; '.join(diffs)}); use a new --workdir or the original settings.")


def config_from_saved(saved: dict[str, Any], report: Callable[[str], None] = print
                      ) -> TrainConfig:
  """The TrainConfig a checkpoint recorded, as this version reads it.

  Fields this version does not know are ignored (with a note through `report`), fields the
  checkpoint lacks take their defaults.

  Raises:
    ValueError: (one line, naming the field) a value of the wrong kind, or a config that fails
      `TrainConfig.validate`.
  """
  fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
  unknown = sorted(set(saved) - set(fields))
  if unknown:
    report(f"Note: the checkpoint's config has field(s) this version does not know, ignored: "
           f"{', '.join(unknown)}.")
  known = {k: v for k, v in saved.items() if k in fields}
  for name, value in known.items():
    default = setting_default(name)
    if value is None or default is None:
      continue
    if not same_kind(value, default):
      raise ValueError(f"the checkpoint's config field {name} is {value!r}; this version "
                       f"expects {kind_name(default)}.")
  try:
    return TrainConfig(**known).validate()
  except ValueError as e:
    raise ValueError(f"the checkpoint's config cannot be used: {e}") from e


def load_for_eval(workdir: str | os.PathLike, step: int | None = None, *,
                  with_optimizer: bool = False, report: Callable[[str], None] = print):
  """Restores checkpoint `step` (default: the newest complete one) of `workdir`.

  Reads without the workdir lock, so it works while a training run writes: temporary (not yet
  complete) checkpoints are never seen, and if the run deletes the newest checkpoint while it is
  being read (it keeps only the last few), the then newest one is read instead.

  Args:
    workdir: a training run's workdir (with checkpoints/).
    step: the checkpoint to read; None: the newest complete one.
    with_optimizer: restore the (model, optimizer) pair instead of the model alone.
    report: receives notes on the recorded config (fields this version does not know).

  Returns:
    A tuple (graphdef, state, meta): of the model alone (what evaluation needs), or of the
      (model, optimizer) pair that training uses when `with_optimizer`; meta holds "step",
      "config", "model" and "seed".

  Raises:
    ValueError: a missing or unreadable workdir, one without checkpoints, a step that does not
      exist, or a recorded config this version cannot use.
    CheckpointError: a ValueError: the checkpoint is damaged (missing, truncated or altered
      files).
  """
  path = Path(workdir).expanduser()
  if not path.is_dir():
    raise ValueError(f"workdir {str(path)!r} does not exist or is not a directory.")
  if not os.access(path, os.R_OK | os.X_OK):
    raise ValueError(f"workdir {str(path)!r} is not readable.")
  if not (path / "checkpoints").is_dir():
    raise ValueError(f"workdir {str(path)!r} has no checkpoints/; train into it first.")
  for attempt in range(3):
    with Checkpointer(path) as ckpt:
      kept = ckpt.all_steps()
      if step is not None and kept and step not in kept:  # (none at all: resolve_step says so)
        raise ValueError(f"no checkpoint of step {step} in {str(ckpt.directory)!r}; it holds "
                         f"step{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))}.")
      chosen = ckpt.resolve_step(step)
      try:
        meta = ckpt.read_meta(chosen)
        config = config_from_saved(meta["config"], report)
        if with_optimizer:
          graphdef, state = create_state(meta["model"], config)
          state, meta = ckpt.restore(state, chosen)
        else:
          graphdef, state = nnx.split(create_model(meta["model"], config))
          state, meta = ckpt.restore(state, chosen, part=0)
        return graphdef, state, meta
      except CheckpointError:
        if step is not None or (ckpt.directory / str(chosen)).exists() or attempt == 2:
          raise  # damaged, not deleted under us by a training run


