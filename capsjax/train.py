"""The training loop: data, jitted steps, metrics.jsonl, progress bar, checkpoints, resume."""

import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from capsjax import archs
from capsjax import config as config_lib
from capsjax import data, datasets, distributed, faults, parallel, pipeline, steps, streams
from capsjax import routing as routing_lib
from capsjax import tensorboard as tensorboard_lib
from capsjax.checkpoint import CheckpointError, Checkpointer, NonFiniteError
from capsjax.config import TrainConfig
from capsjax.interrupt import StopOnSignal, TrainingInterrupted
from capsjax.kinds import kind_name, same_kind
from capsjax.workdir import (StorageError, WorkdirLock, append_line, prepare_workdir,
                             write_text_atomic)

# Settings that change the network; a checkpoint is only resumable with the same values.
MODEL_KEYS = ("arch", "input_shape", "num_classes", "routing", "routing_iters", "routing_options")


def model_settings(config: TrainConfig, split: data.Split,
                   input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
  """The network's settings for `config` on a dataset like `split` (recorded with the run):
  arch, input_shape (default: the split's image shape), num_classes, the arch's TrainConfig
  fields and `config.model`."""
  arch = archs.get(config.arch)
  own = {k: getattr(config, k) for k in arch.config_keys}
  shape = split.images.shape[1:] if input_shape is None else input_shape
  return {"arch": arch.name, "input_shape": list(shape),
          "num_classes": int(split.num_classes),
          **{k: dict(v) if isinstance(v, dict) else v for k, v in own.items()}, **config.model}


def create_model(settings: dict[str, Any], config: TrainConfig) -> nnx.Module:
  """A fresh network of recorded `settings` (see `model_settings`), initialised from the "init"
  stream of config.seed (`capsjax.streams`)."""
  return archs.of_settings(settings).create(settings, config,
                                           nnx.Rngs(streams.init_rngs_key(config.seed)))


def schedule_args(config: TrainConfig) -> tuple:
  """`steps.make_schedule`'s arguments of `config`."""
  return (config.learning_rate, config.decay_rate, config.decay_steps, config.decay_staircase,
          config.min_learning_rate)


def create_state(settings: dict[str, Any], config: TrainConfig):
  """(graphdef, state) of a fresh (model, nnx.Optimizer) pair seeded by config.seed."""
  model = create_model(settings, config)
  tx = steps.make_optimizer(*schedule_args(config))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return nnx.split((model, optimizer))


class MetricsWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`, each line whole or not at all.

  `guard()` runs before each write (the workdir lock's check that the workdir is still there);
  a failed write raises StorageError ending with `last_checkpoint()` (a phrase naming the last
  complete checkpoint). Each record also goes to `also.write` if given (TensorBoard).
  """

  def __init__(self, workdir: Path, guard: Callable[[], None] = lambda: None,
               last_checkpoint: Callable[[], str] | None = None, also=None):
    self.path = workdir / "metrics.jsonl"
    self.guard, self.last_checkpoint, self.also = guard, last_checkpoint, also

  def write(self, record: dict[str, Any]) -> None:
    try:
      self.guard()
      append_line(self.path, json.dumps(record))
    except StorageError as e:
      if self.last_checkpoint is None:
        raise
      raise StorageError(f"{e}; {self.last_checkpoint()}") from e
    if self.also is not None:
      self.also.write(record)


def _summarise(metrics: list[steps.StepMetrics]) -> dict[str, Any]:
  """Sums batch metrics (scalars, or [K] rows of a chunk) on the host and turns them into means:
  {"loss", <the network's loss terms>, "accuracy", "examples"}."""
  total = jax.tree.map(lambda *xs: float(sum(np.sum(x) for x in xs)), *jax.device_get(metrics))
  n = max(total.count, 1.0)
  return {"loss": total.loss / n, **{k: v / n for k, v in total.terms.items()},
          "accuracy": total.correct / n, "examples": int(total.count)}


def evaluate_indexed(eval_step, state, stored, indices: np.ndarray, batch_size: int,
                     progress: bool = False, place: Callable[[Any], Any] | None = None
                     ) -> dict[str, float]:
  """Evaluation over examples `indices` of a dataset built on `stored` (device arrays (images,
  labels)); `eval_step` is `steps.make_eval_step(graphdef, loss_fn, examples)`. The last batch is
  padded with example 0 and masked, so every batch has one shape (one compilation).
  `place(batch)` puts each (index, valid) batch on the devices (`parallel.batch_placer`)."""
  num_batches = -(-len(indices) // batch_size)
  place = place or (lambda batch: batch)
  results = []
  for b in tqdm(range(num_batches), unit="batch", desc="eval", disable=not progress,
                dynamic_ncols=True, leave=False):
    index = np.zeros(batch_size, np.int32)
    part = indices[b * batch_size:(b + 1) * batch_size]
    index[:len(part)] = part
    valid = np.arange(batch_size) < len(part)
    result = eval_step(state, *stored, *place((index, valid)))
    results.append(jax.block_until_ready(result) if progress else result)
  return _summarise(results)


def test_record(step: int, result: dict[str, Any]) -> dict[str, Any]:
  """The metrics.jsonl / CLI record of an `evaluate_indexed` result on the test split."""
  terms = {f"test_{k}": v for k, v in result.items() if k not in ("loss", "accuracy", "examples")}
  return {"step": step, "split": "test", "test_accuracy": result["accuracy"],
          "test_loss": result["loss"], **terms, "test_examples": result["examples"]}


def train_record(step: int, summary: dict[str, Any]) -> dict[str, Any]:
  """The metrics.jsonl record of the train steps summarised in `summary` (see `_summarise`)."""
  terms = {k: v for k, v in summary.items() if k not in ("loss", "accuracy", "examples")}
  return {"step": step, "split": "train", "loss": summary["loss"], **terms,
          "train_accuracy": summary["accuracy"]}


def _setting_default(key: str, arch: str = archs.DEFAULT) -> Any:
  """What a setting absent from an older checkpoint's metadata meant: its default."""
  field = {f.name: f for f in dataclasses.fields(TrainConfig)}.get(key)
  if field is not None and field.default is not dataclasses.MISSING:
    return field.default
  if field is not None and field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return config_lib.model_options(arch).get(key)


def _differences(saved: dict[str, Any], now: dict[str, Any], keys) -> list[str]:
  """"name: checkpoint X vs now Y" for each of `keys` that differs (missing = default; model
  options default to those of the dict's own arch)."""
  value = lambda d, k: d[k] if k in d else _setting_default(k, d.get("arch", archs.DEFAULT))
  return [f"{k}: checkpoint {value(saved, k)!r} vs now {value(now, k)!r}" for k in sorted(keys)
          if value(saved, k) != value(now, k)]


def model_mismatches(saved: dict[str, Any], settings: dict[str, Any]) -> list[str]:
  """The model settings (MODEL_KEYS and any network option) that differ, one string each.

  `routing_iters` does not count for a one-pass rule (`iterative=False`), which ignores it.
  """
  keys = set(MODEL_KEYS) | set(saved) | set(settings)
  rule = settings.get("routing", _setting_default("routing"))
  if saved.get("routing", _setting_default("routing")) == rule and rule in routing_lib.available():
    if not routing_lib.info(rule).iterative:
      keys.discard("routing_iters")
  return _differences(saved, settings, keys)


# Settings a resumed run may change without leaving the uninterrupted run's path.
_FREE_ON_RESUME = ("epochs", "max_steps", "log_every", "eval_every", "eval_batch_size",
                   "test_examples",
                   "checkpoint_every", "keep_checkpoints", "seed", "model", "pipeline",
                   "steps_per_dispatch", "devices")


def _check_resumable(saved: dict[str, Any], settings: dict[str, Any], workdir: Path) -> None:
  diffs = model_mismatches(saved, settings)
  if diffs:
    raise ValueError(f"workdir {str(workdir)!r} holds a checkpoint of a different model ("
                     f"{'; '.join(diffs)}); use a new --workdir or the original settings.")


def _nonfinite_message(step: int, loss: float, ckpt: Checkpointer) -> str:
  good = ckpt.latest_step()
  kept = (f"the last good checkpoint is step {good} in {ckpt.directory}" if good is not None
          else "no checkpoint had been written yet")
  return (f"non-finite loss, gradient or updated parameters at step {step} (mean loss "
          f"{loss:.6g}); "
          f"stopped without saving it; {kept}. Lower the learning rate or check the data.")


def train(config: TrainConfig, workdir: str | os.PathLike, data_dir: str | None = None,
          *, train_limit: int | None = None, test_limit: int | None = None,
          progress: bool = True, tensorboard: bool = False) -> dict[str, Any]:
  """Trains (or resumes) the network `config.arch` and returns the final test metrics.

  Args:
    config: validated TrainConfig.
    workdir: holds checkpoints/, metrics.jsonl and config.json; an existing run there is resumed
      from its latest checkpoint.
    data_dir: TFDS data_dir (None: $TFDS_DATA_DIR).
    train_limit: use only the first N stored training examples (smoke tests; default
      config.train_examples; recorded with the run as its train_examples).
    test_limit: evaluate on N test examples (default: config.test_examples; recorded with the
      run as its test_examples): the first N of a stored set, N spread evenly over a set built
      on the fly (`datasets.subset`).
    progress: show a tqdm progress bar (stderr).
    tensorboard: also write the metrics and test reconstructions to WORKDIR/tensorboard
      (needs tensorboardX; see capsjax/tensorboard.py).
  Returns:
    {"step", "test_accuracy", "test_loss", ..., "train_seconds"}.
  Raises:
    ValueError: bad input, or a checkpoint in `workdir` of a different model.
    TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint of the last finished step was saved.
    NonFiniteError: a NaN/Inf loss or gradient; nothing of that step was saved.
    WorkdirBusyError (a ValueError): another process is training in `workdir`.
    StorageError: a checkpoint, metrics.jsonl or config.json could not be written (disk full,
      read-only, workdir removed); complete checkpoints and written metrics lines are intact.
  """
  if test_limit is not None:  # recorded with the run: `capsjax eval` and `viz` default to it
    config = dataclasses.replace(config, test_examples=test_limit)
  if train_limit is not None:  # recorded too: a resume without it is told the data changed
    config = dataclasses.replace(config, train_examples=train_limit)
  config.validate()
  dataset = datasets.get(config.dataset, "train")
  if config.pipeline == "host" and not dataset.host_batches:
    raise ValueError(f"dataset {config.dataset!r} builds each example from the whole stored "
                     "split on the device; use --pipeline device or auto, not host.")
  dataset.loss(archs.get(config.arch), config)  # a network the dataset cannot train: now
  # Bad input fails before the workdir is created; absolute from here on (resolved once).
  data_dir = data.resolve_data_dir(data_dir)
  mesh = parallel.make_mesh(config.devices, config.batch_size)
  if tensorboard:
    tensorboard_lib.check_available()
  # Everything decidable from the config and the data is decided before the workdir is touched:
  # a batch larger than the training set, more test examples than the set has.
  splits = _load_splits(dataset, config, data_dir, config.train_examples, config.test_examples)
  workdir = prepare_workdir(workdir)
  # Process 0 owns the workdir (the lock, metrics, config.json); the others of a multi-process
  # run only take part in the checkpoints' collective writes and reads.
  lock = WorkdirLock(workdir)  # taken by process 0; all learn whether it could (`decide`)
  with lock:  # before anything in the workdir is read or changed
    return _train_locked(config, workdir, lock, splits, progress and distributed.is_main(),
                         tensorboard, mesh)


class _Splits(NamedTuple):
  """A run's stored splits, the sizes of the sets built on them and the test examples used."""

  train: data.Split
  test: data.Split
  train_size: int
  test_indices: np.ndarray


def _load_splits(dataset: datasets.Dataset, config: TrainConfig, data_dir: str | None,
                 train_limit: int | None, test_limit: int | None) -> _Splits:
  """Loads the stored splits and checks the batch size and the test count against them
  (ValueError, one line)."""
  train_split = dataset.load("train", data_dir, train_limit)
  test_split = dataset.load("test", data_dir, None if test_limit is None or
                            not dataset.host_batches else test_limit)
  train_size = dataset.size("train", train_split)
  data.steps_per_epoch(train_size, config.batch_size)  # the batch size vs the data
  test_indices = datasets.subset(dataset.size("test", test_split), test_limit,
                                 f"the {config.dataset} test set")
  return _Splits(train_split, test_split, train_size, test_indices)


def _train_locked(config: TrainConfig, workdir: Path, lock: WorkdirLock, splits: _Splits,
                  progress: bool, tensorboard: bool, mesh: jax.sharding.Mesh) -> dict[str, Any]:
  t_start = time.time()
  dataset = datasets.get(config.dataset, "train")
  train_split, test_split, train_size, test_indices = splits
  # The network's input shape does not depend on the seed; the examples are built below, once
  # the run's seed is known (a resumed run keeps the seed it was started with).
  settings = model_settings(config, train_split, datasets.input_shape(
      dataset.examples(config, "train", train_split), train_split))
  total_steps = config.total_steps(train_size)

  graphdef, state = create_state(settings, config)
  # Replicated on the mesh's devices (one device: just placed there); a restore keeps this.
  state = parallel.put(state, parallel.replicated(mesh))
  main = distributed.is_main()
  say = print if main else (lambda *_: None)
  board = tensorboard_lib.TensorBoardWriter(workdir) if tensorboard and main else None
  with Checkpointer(workdir, keep=config.keep_checkpoints, cleanup=True,
                    guard=lock.check) as ckpt, (
      contextlib.closing(board) if board else contextlib.nullcontext()):
    for name in ckpt.removed_incomplete:
      say(f"Removed {name}: an incomplete checkpoint left by an interrupted save.")
    start_step = 0
    restored = ckpt.restore_newest_good(
        state, lambda meta: _check_resumable(meta.get("model", {}), settings, workdir), say)
    if restored is not None:
      state, saved = restored
      start_step = int(saved["step"])
      say(f"Resuming from checkpoint at step {start_step} in {ckpt.directory}")
      now = dataclasses.asdict(config)
      changed = _differences(saved.get("config", {}), now, set(now) - set(_FREE_ON_RESUME))
      if changed:  # allowed, but the user should know the run leaves the uninterrupted path
        say(f"Note: training settings changed since the checkpoint ({'; '.join(changed)}); the "
            "resumed run will differ from an uninterrupted one.")
      if saved["seed"] != config.seed:  # data order and augmentation keys follow the run's seed
        say(f"Keeping the run's seed {saved['seed']} (ignoring seed {config.seed}).")
        config = dataclasses.replace(config, seed=saved["seed"])
    try:
      distributed.decide(lambda: write_text_atomic(workdir / "config.json", json.dumps(
          {"config": dataclasses.asdict(config), "model": settings}, indent=2)))
    except StorageError as e:
      raise StorageError(f"{e}; {ckpt.last_complete_phrase()}") from e
    meta = {"config": dataclasses.asdict(config), "model": settings, "seed": config.seed}
    train_examples = dataset.examples(config, "train", train_split)  # of the run's seed
    test_examples = dataset.examples(config, "test", test_split)

    arch = archs.get(config.arch)
    loss_fn = dataset.loss(arch, config)
    eval_step = steps.make_eval_step(graphdef, loss_fn, test_examples)
    test_stored = parallel.put((test_split.images, test_split.labels), parallel.replicated(mesh))
    writer = MetricsWriter(workdir, lock.check, ckpt.last_complete_phrase, board)
    write = lambda record: distributed.decide(lambda: writer.write(record))  # process 0 writes
    outputs = steps.make_outputs_step(graphdef, arch.outputs) if tensorboard else None
    eval_batch_size = config.eval_batch_size or steps.default_eval_batch_size()
    base_keys = parallel.put(streams.run_keys(config.seed), parallel.replicated(mesh))
    schedule = steps.make_schedule(*schedule_args(config))

    def run_eval(step: int) -> dict[str, Any]:
      result = evaluate_indexed(eval_step, state, test_stored, test_indices, eval_batch_size,
                                progress, parallel.batch_placer(mesh, eval_batch_size))
      record = {**test_record(step, result), "elapsed_s": time.time() - t_start}
      write(record)
      if outputs is not None:  # every process runs the program; process 0 writes the images
        sample, _ = jax.device_get(test_examples(None, test_split.images, test_split.labels,
                                                 test_indices[:8]))
        recon = outputs(state, parallel.put(sample, parallel.replicated(mesh))).reconstructions
        if recon is not None and board is not None:  # networks without a decoder have none
          board.images(step, sample, np.asarray(recon))
      return record

    capacity = config.steps_per_dispatch or config.log_every
    source = pipeline.make_source(config.pipeline, train_split, config.batch_size, config.seed,
                                  capacity, mesh, num_examples=train_size)
    train_chunk = steps.make_train_chunk(graphdef, loss_fn, examples=train_examples)
    boundaries = faults.chunk_boundaries()

    def chunk_end(step: int) -> int:
      """Where the chunk starting at `step` ends: the next step at which the host has work."""
      every = (capacity, config.log_every, config.checkpoint_every, config.eval_every)
      return min([total_steps, *((step // e + 1) * e for e in every if e),
                  *(b for b in boundaries if b > step)])

    pending: list[steps.StepMetrics] = []
    bar = tqdm(total=total_steps, initial=start_step, unit="step", disable=not progress,
               dynamic_ncols=True, desc=f"train {config.dataset}")
    # Throughput counts training alone: the seconds spent saving checkpoints and evaluating
    # within a logging window are taken out and logged beside it (checkpoint_s, eval_s).
    window_start, window_images = time.time(), 0
    aside = {"checkpoint_s": 0.0, "eval_s": 0.0}
    step = start_step
    upcoming = source.chunk(step, chunk_end(step) - step) if step < total_steps else None
    with StopOnSignal() as stop:
      while step < total_steps:
        done = chunk_end(step)
        state = faults.maybe_poison(state, step + 1)
        with jax.transfer_guard("disallow"):  # the chunk's data is on the device already
          state, result = train_chunk(state, *upcoming, base_keys)
        if done < total_steps:  # prepared while the device runs this chunk
          upcoming = source.chunk(done, chunk_end(done) - done)
        result = jax.device_get(result)  # metrics of the whole chunk in one transfer
        ran = int(result.steps_run)
        if result.bad_step:
          bar.close()
          bad = jax.tree.map(lambda x: x[ran], result.metrics)  # the non-finite step's sums
          raise NonFiniteError(_nonfinite_message(
              int(result.bad_step), float(bad.loss) / max(float(bad.count), 1.0), ckpt))
        pending.append(jax.tree.map(lambda x: x[:ran], result.metrics))
        window_images += ran * config.batch_size
        step = done
        if done % config.log_every == 0 or done == total_steps:
          summary = _summarise(pending)
          pending = []
          training_s = time.time() - window_start - sum(aside.values())
          rate = window_images / max(training_s, 1e-9)
          write({**train_record(done, summary), "images_per_sec": rate, **aside,
                 "learning_rate": float(schedule(done - 1)), "elapsed_s": time.time() - t_start})
          window_start, window_images = time.time(), 0
          aside = {"checkpoint_s": 0.0, "eval_s": 0.0}
          bar.set_postfix(loss=f"{summary['loss']:.4f}", acc=f"{summary['accuracy']:.3f}",
                          img_s=f"{rate:.0f}")
        bar.update(ran)
        faults.pause_after_step(done, lambda: stop.requested)
        # A signal may reach the processes of a multi-process run chunks apart: all stop at the
        # first chunk end where any has it, so that all save the same step together.
        stopping = distributed.any_process(stop.requested)
        if stopping and done < total_steps:
          bar.close()
          ckpt.save(done, state, meta)
          # (a process that got no signal itself reports SIGTERM, a scheduler's usual one)
          raise TrainingInterrupted(stop.signum or signal.SIGTERM, done, str(ckpt.directory))
        if done % config.checkpoint_every == 0 and done < total_steps:
          t0 = time.time()
          ckpt.save(done, state, meta)
          aside["checkpoint_s"] += time.time() - t0
        if config.eval_every and done % config.eval_every == 0 and done < total_steps:
          t0 = time.time()
          accuracy = run_eval(done)["test_accuracy"]
          aside["eval_s"] += time.time() - t0
          if main:
            bar.write(f"step {done}: test accuracy {accuracy:.4%}")
      bar.close()
      final_step = max(start_step, total_steps)
      if start_step >= total_steps:
        say(f"Already trained to step {start_step} (>= {total_steps}); evaluating only.")
      else:
        ckpt.save(total_steps, state, meta)
      if distributed.any_process(stop.requested):  # arrived during the last chunk: no final
        # evaluation either
        raise TrainingInterrupted(stop.signum or signal.SIGTERM, final_step,
                                  str(ckpt.directory))
    final = run_eval(final_step)
    final["train_seconds"] = time.time() - t_start
    return final


def config_from_saved(saved: dict[str, Any], report: Callable[[str], None] = print
                      ) -> TrainConfig:
  """The TrainConfig a checkpoint recorded, as this version reads it.

  Fields this version does not know are ignored (with a note through `report`), fields the
  checkpoint lacks take their defaults; a value of the wrong kind, or one that fails
  `validate`, raises a one-line ValueError naming the field.
  """
  fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
  unknown = sorted(set(saved) - set(fields))
  if unknown:
    report(f"Note: the checkpoint's config has field(s) this version does not know, ignored: "
           f"{', '.join(unknown)}.")
  known = {k: v for k, v in saved.items() if k in fields}
  for name, value in known.items():
    default = _setting_default(name)
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

  Returns:
    (graphdef, state, meta): of the model alone (what evaluation needs), or of the
    (model, optimizer) pair that training uses when `with_optimizer`.
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


def evaluate_checkpoint(workdir: str | os.PathLike, dataset: str | None = None,
                        data_dir: str | None = None, test_examples: int | str | None = None,
                        batch_size: int | None = None, progress: bool = False,
                        step: int | None = None) -> dict[str, Any]:
  """The test record (`test_record`, plus "dataset") of checkpoint `step` (default: newest) of
  `workdir` on the test set of `dataset` (default: the one it was trained on), e.g. a network
  trained on expanded_mnist evaluated on affnist_style.

  `test_examples`: N (the first N of a stored set, N spread evenly over a built one, as in
  training); "all": every example of the set (MultiMNIST: 10,000,000 pairs); None: the run's own
  evaluation. On the run's own dataset that is the count it recorded (TrainConfig.test_examples;
  a run that recorded none evaluated the whole set, and so does this). On another dataset the
  same number of examples, at most that whole set: the recorded count, or the size of the run's
  own test set if it recorded none (so an expanded_mnist run evaluates 10,000 affnist_style
  examples, not all 320,000). With `progress`, a bar counts the examples out of that total.

  Raises ValueError (one line) for an unknown dataset, a count that is not a positive integer or
  "all", more test examples than the set has, or a dataset whose inputs differ in shape from
  what the network takes.
  """
  datasets.check_test_examples(test_examples)
  graphdef, state, meta = load_for_eval(workdir, step)
  config = config_from_saved(meta["config"], report=lambda _: None)
  name = dataset or config.dataset
  chosen = datasets.get(name, "test")
  settings = meta["model"]
  # count None: the whole set; at_most: a default carried over to another set, cut to its size.
  count, at_most = (None if test_examples == "all" else test_examples), False
  if test_examples is None:
    count, at_most = config.test_examples, name != config.dataset
    if at_most and count is None:  # the run evaluated the whole of its own test set
      own = datasets.get(config.dataset, "test")
      count = own.size("test", own.load("test", data_dir, None))
  stored = chosen.load("test", data_dir, count if chosen.host_batches and not at_most else None)
  examples = chosen.examples(config, "test", stored)
  given = datasets.input_shape(examples, stored)
  expected = tuple(settings.get("input_shape", (28, 28, 1)))
  if given != expected:
    raise ValueError(f"the checkpoint in {str(workdir)!r} takes {'x'.join(map(str, expected))} "
                     f"inputs (trained on {config.dataset}); dataset {name!r} gives "
                     f"{'x'.join(map(str, given))}."
                     " Evaluate it on a dataset of its input size.")
  size = chosen.size("test", stored)
  if at_most:
    count = min(count, size)
    size = count if chosen.host_batches else size  # a stored set: its first `count`
  indices = datasets.subset(size, count, f"the {name} test set")
  loss_fn = chosen.loss(archs.of_settings(settings), config)
  eval_step = steps.make_eval_step(graphdef, loss_fn, examples)
  bar = tqdm(total=len(indices), unit="example", desc=f"eval {name} ({len(indices):,} examples)",
             disable=not progress, dynamic_ncols=True, leave=False)

  def counted(*args):  # the step of one batch; the bar advances by its valid examples
    metrics = eval_step(*args)
    if progress:
      jax.block_until_ready(metrics)
      bar.update(int(np.sum(args[-1])))  # args[-1]: the batch's valid mask (host numpy)
    return metrics

  with bar:
    result = evaluate_indexed(counted, state, jax.device_put((stored.images, stored.labels)),
                              indices, batch_size or steps.default_eval_batch_size())
  return {"dataset": name, **test_record(int(meta["step"]), result)}
