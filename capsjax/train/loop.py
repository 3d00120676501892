"""The training loop, `train(config, workdir)`, in the order it runs:

1. `train`: check the config and the data, take the workdir lock;
2. `_setup`: the stored splits' network and a fresh (model, optimizer) state;
3. `_restore_or_start`: resume from the newest good checkpoint, or start at step 0;
4. `_run_chunks`: compiled chunks of K steps (`steps.make_train_chunk`), each followed by the
   small periodic actions (log, checkpoint, evaluate, stop on a signal) due at its last step;
5. the final checkpoint and the final evaluation (`_Evaluation`).

The loop never asks which network or dataset it trains: both come as values (the network's
`archs.Arch`, the dataset's `data.dataset.Dataset`). Where each chunk ends is `chunk_end`'s
decision alone; `metrics.LogWindow` turns chunk results into metrics.jsonl lines.
"""

import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from capsjax.core import streams
from capsjax.data import datasets, order, pipeline, storage
from capsjax.data.dataset import Dataset, input_shape, subset
from capsjax.infra import distributed, hooks, parallel
from capsjax.infra.checkpoint import Checkpointer, NonFiniteError, manifest_damage
from capsjax.infra.interrupt import StopOnSignal, TrainingInterrupted
from capsjax.infra.workdir import StorageError, WorkdirLock, prepare_workdir, write_text_atomic
from capsjax.train import archs, metrics, model_state, steps
from capsjax.train import tensorboard as tensorboard_lib
from capsjax.train.config import TrainConfig
from capsjax.train.evaluate import evaluate_indexed


def train(config: TrainConfig, workdir: str | os.PathLike, data_dir: str | None = None,
          *, train_limit: int | None = None, test_limit: int | None = None,
          progress: bool = True, tensorboard: bool = False) -> dict[str, Any]:
  """Trains (or resumes) the network `config.arch` and returns the final test metrics.

  Args:
    config: a TrainConfig (validated here).
    workdir: holds checkpoints/, metrics.jsonl and config.json; an existing run there is resumed
      from its newest good checkpoint.
    data_dir: TFDS data_dir (None: $TFDS_DATA_DIR, else the one a run in `workdir` recorded).
    train_limit: train on the first N stored training examples only (smoke tests; default
      config.train_examples; recorded with the run as its train_examples).
    test_limit: evaluate on N test examples (default config.test_examples; recorded with the
      run as its test_examples): the first N of a stored set, N spread evenly over a set built
      on the fly (`capsjax.data.dataset.subset`).
    progress: show tqdm progress bars (stderr).
    tensorboard: also write the metrics and test reconstructions to WORKDIR/tensorboard (needs
      tensorboardX; `capsjax.train.tensorboard`).

  Returns:
    The final test record: {"step", "split", "test_accuracy", "test_loss", the network's
      "test_<term>" losses, "test_examples", "elapsed_s", "train_seconds"} (times in seconds).

  Raises:
    ValueError: bad input, or a checkpoint in `workdir` of a different model.
    TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint of the last finished step was saved.
    NonFiniteError: a NaN/Inf loss, gradient or updated parameter; nothing of that step was saved.
    WorkdirBusyError: a ValueError: another process is training in `workdir`.
    StorageError: a checkpoint, metrics.jsonl or config.json could not be written (disk full,
      read-only, workdir removed); complete checkpoints and written metrics lines are intact.
  """
  # Both limits are recorded with the run: `capsjax eval` and `viz` default to the test count,
  # and a resume without the training one is told that its data changed.
  limits = {k: v for k, v in (("test_examples", test_limit), ("train_examples", train_limit))
            if v is not None}
  config = dataclasses.replace(config, dataset=datasets.canonical(config.dataset),
                               **limits).validate()
  dataset = datasets.get(config.dataset, "train", config)
  if config.pipeline == "host" and not dataset.host_batches:
    raise ValueError(f"dataset {config.dataset!r} builds each example from the whole stored "
                     "split on the device; use --pipeline device or auto, not host.")
  dataset.loss(archs.get(config.arch), config)  # a network the dataset cannot train: now
  # absolute from here on; a resumed run without --data-dir or $TFDS_DATA_DIR reads its own
  data_dir = datasets.data_dir_for(dataset, data_dir, model_state.recorded_data_dir(workdir))
  mesh = parallel.make_mesh(config.devices, config.batch_size)
  if tensorboard:
    tensorboard_lib.check_available()
  # What the workdir's record decides (another network: refused; the run already finished:
  # its result) is decided now, before any data is read.
  finished = distributed.decide(lambda: _decided_by_the_record(config, workdir))
  if finished is not None:
    return finished
  # Everything decidable from the config and the data is decided before the workdir is touched
  # (a batch larger than the training set, more test examples than the set has).
  splits = _load_splits(dataset, config, data_dir)
  settings = _settings(config, dataset, splits.train)
  nnx.eval_shape(lambda: model_state.create_model(settings, config))  # e.g. inputs too small
  if config.pretrained is not None:  # a shipped network of another kind: refused here too
    model_state.check_pretrained(settings, config.pretrained)
  workdir = prepare_workdir(workdir)
  # Process 0 owns the workdir (the lock, metrics, config.json); the others of a multi-process
  # run only take part in the checkpoints' collective writes and reads.
  with WorkdirLock(workdir) as lock:  # before anything in the workdir is read or changed
    run = _Run(config, dataset, splits, workdir, data_dir, lock, mesh,
               progress and distributed.is_main(), tensorboard, time.time())
    return _train_locked(run)


class _Splits(NamedTuple):
  """A run's stored splits, the size of the training set built on them and the test examples
  evaluated (indices into the test set built on `test`)."""

  train: storage.Split
  test: storage.Split
  train_size: int
  test_indices: np.ndarray


class _Run(NamedTuple):
  """What every step of a locked run reads."""

  config: TrainConfig
  dataset: Dataset
  splits: _Splits
  workdir: Path
  data_dir: Path | None  # None: a dataset that reads no data dir (an image folder, arrays)
  lock: WorkdirLock
  mesh: jax.sharding.Mesh | None
  progress: bool
  tensorboard: bool
  started: float  # time.time() at the start


def _load_splits(dataset: Dataset, config: TrainConfig, data_dir: Path) -> _Splits:
  """The stored splits of `config`'s counts, with the batch size and the test count checked
  against them (ValueError, one line)."""
  train_split = dataset.load("train", data_dir, config.train_examples)
  test_count = config.test_examples
  test_split = dataset.load("test", data_dir, test_count if dataset.host_batches else None)
  train_size = dataset.size("train", train_split)
  order.steps_per_epoch(train_size, config.batch_size)  # the batch size vs the data
  test_indices = subset(dataset.size("test", test_split), test_count,
                        f"the {config.dataset} test set")
  return _Splits(train_split, test_split, train_size, test_indices)


def _train_locked(run: _Run) -> dict[str, Any]:
  """Steps 2 to 5 of the module docstring, in the locked workdir."""
  settings, graphdef, state = _setup(run)
  say = print if distributed.is_main() else (lambda *_: None)
  board = tensorboard_lib.TensorBoardWriter(run.workdir) \
      if run.tensorboard and distributed.is_main() else None
  with Checkpointer(run.workdir, keep=run.config.keep_checkpoints, cleanup=True,
                    guard=run.lock.check) as ckpt, (
      contextlib.closing(board) if board else contextlib.nullcontext()):
    for name in ckpt.removed_incomplete:
      say(f"Removed {name}: an incomplete checkpoint left by an interrupted save.")
    state, start_step, config = _restore_or_start(run, ckpt, graphdef, state, settings, say)
    run = run._replace(config=config)
    total_steps = config.total_steps(run.splits.train_size)
    _record_run(run, settings, total_steps, ckpt)
    write = _metrics_writer(run, ckpt, board)
    evaluation = _Evaluation(run, graphdef, write, board)
    meta = {"config": dataclasses.asdict(config), "model": settings, "seed": config.seed,
            "class_names": _class_names(run.splits.train),
            "stored_shape": list(run.splits.train.images.shape[1:])}
    state, final_step, training_s = _run_chunks(run, graphdef, state, start_step, total_steps,
                                                ckpt, meta, write, evaluation)
    final = evaluation(state, final_step)
  final["train_seconds"] = training_s
  return final


def _setup(run: _Run):
  """(settings, graphdef, state): the network's recorded settings for the run's data and a
  fresh (model, optimizer) state from the "init" stream, replicated on the mesh's devices."""
  settings = _settings(run.config, run.dataset, run.splits.train)
  graphdef, state = model_state.create_state(settings, run.config)
  return settings, graphdef, parallel.put(state, parallel.replicated(run.mesh))


def _settings(config: TrainConfig, dataset: Dataset, split: storage.Split) -> dict[str, Any]:
  """The network's recorded settings for the run's data (`model_state.model_settings`)."""
  # The input shape does not depend on the seed (a resumed run may keep another one).
  shape = input_shape(dataset.builder(config, "train", split), split)
  return model_state.model_settings(config, split, shape)


def _restore_or_start(run: _Run, ckpt: Checkpointer, graphdef, state, settings: dict[str, Any],
                      say):
  """(state, start step, config): from the newest good checkpoint of the same model, whose
  seed the run keeps (its data order and keys follow it); else the fresh state at step 0, its
  model filled from `config.pretrained` when set (`model_state.start_from`)."""
  config = run.config
  restored = ckpt.restore_newest_good(
      state, lambda meta: model_state.check_resumable(meta.get("model", {}), settings,
                                                      run.workdir), say)
  if restored is None:
    if config.pretrained is not None:
      model, optimizer = nnx.merge(graphdef, state)
      model_state.start_from(model, settings, config.pretrained)
      state = parallel.put(nnx.state((model, optimizer)), parallel.replicated(run.mesh))
      say(f"Starting from pretrained model {config.pretrained!r}.")
    return state, 0, config
  state, saved = restored
  start_step = int(saved["step"])
  say(f"Resuming from checkpoint at step {start_step} in {ckpt.directory}")
  if config.pretrained is not None:
    say(f"Note: pretrained model {config.pretrained!r} is not used: the run resumes from its "
        "own checkpoint.")
  changed = model_state.changed_on_resume(saved.get("config", {}), config)
  if changed:  # allowed, but the user should know the run leaves the uninterrupted path
    say(f"Note: training settings changed since the checkpoint ({'; '.join(changed)}); the "
        "resumed run will differ from an uninterrupted one.")
  if saved["seed"] != config.seed:
    say(f"Keeping the run's seed {saved['seed']} (ignoring seed {config.seed}).")
    config = dataclasses.replace(config, seed=saved["seed"])
  return state, start_step, config


def _record_run(run: _Run, settings: dict[str, Any], total_steps: int,
                ckpt: Checkpointer) -> None:
  """Writes WORKDIR/config.json (process 0, `model_state.RUN_RECORD`): the run's config,
  network settings, absolute data dir and length in steps."""
  text = json.dumps({"config": dataclasses.asdict(run.config), "model": settings,
                     "class_names": _class_names(run.splits.train),
                     "data_dir": None if run.data_dir is None else str(run.data_dir),
                     "total_steps": total_steps}, indent=2)
  try:
    distributed.decide(lambda: write_text_atomic(run.workdir / model_state.RUN_RECORD, text))
  except StorageError as e:
    raise StorageError(f"{e}; {ckpt.last_complete_phrase()}") from e


def _class_names(split: storage.Split) -> list[str] | None:
  """The class names a run records (checkpoints and config.json): the dataset's, or None."""
  return None if split.class_names is None else list(split.class_names)


def _metrics_writer(run: _Run, ckpt: Checkpointer, board):
  """`write(record)`: one metrics.jsonl line, written by process 0 (and to TensorBoard)."""
  writer = metrics.MetricsWriter(run.workdir, run.lock.check, ckpt.last_complete_phrase, board)
  return lambda record: distributed.decide(lambda: writer.write(record))


class _Evaluation:
  """`evaluation(state, step)`: the run's test examples evaluated, the test record written
  (and, with TensorBoard, 8 test reconstructions) and returned."""

  def __init__(self, run: _Run, graphdef, write, board):
    config, split = run.config, run.splits.test
    self.build = run.dataset.builder(config, "test", split)
    loss_fn = run.dataset.loss(archs.get(config.arch), config)
    self.step = steps.make_eval_step(graphdef, loss_fn, self.build)
    self.stored = parallel.put((split.images, split.labels), parallel.replicated(run.mesh))
    self.batch_size = config.eval_batch_size or steps.default_eval_batch_size()
    self.place = parallel.batch_placer(run.mesh, self.batch_size)
    self.outputs = steps.make_outputs_step(graphdef, archs.get(config.arch).outputs) \
        if run.tensorboard else None
    self.run, self.write, self.board = run, write, board

  def __call__(self, state, step: int) -> dict[str, Any]:
    run = self.run
    result = evaluate_indexed(self.step, state, self.stored, run.splits.test_indices,
                              self.batch_size, run.progress, self.place)
    record = {**metrics.test_record(step, result), "elapsed_s": time.time() - run.started}
    self.write(record)
    if self.outputs is not None:  # every process runs the program; process 0 writes images
      split = run.splits.test
      sample, _ = jax.device_get(self.build(None, split.images, split.labels,
                                            run.splits.test_indices[:8]))
      recon = self.outputs(state, parallel.put(sample, parallel.replicated(run.mesh)))
      if recon.reconstructions is not None and self.board is not None:
        self.board.images(step, sample, np.asarray(recon.reconstructions))
    return record


def chunk_end(step: int, total_steps: int, every: tuple[int, ...], extra: set[int]) -> int:
  """Where the chunk of training steps starting after `step` ends: the next multiple of any of
  `every` (the chunk capacity, log_every, checkpoint_every, eval_every; 0s ignored), an `extra`
  step (the installed `hooks.RunHooks.chunk_ends`) or `total_steps`, whichever comes first."""
  return min([total_steps, *((step // e + 1) * e for e in every if e),
              *(b for b in extra if b > step)])


def _run_chunks(run: _Run, graphdef, state, start_step: int, total_steps: int,
                ckpt: Checkpointer, meta: dict[str, Any], write, evaluation: _Evaluation):
  """Trains from `start_step` to `total_steps` in compiled chunks, running after each the
  periodic actions due at its last step; saves the final checkpoint. Returns (state, the final
  step, the seconds spent training: `metrics.LogWindow.training_s`). Raises NonFiniteError or
  TrainingInterrupted (with a checkpoint saved)."""
  config, mesh, faults = run.config, run.mesh, hooks.installed()
  capacity = config.steps_per_dispatch or config.log_every
  source = pipeline.make_source(config.pipeline, run.splits.train, config.batch_size,
                                config.seed, capacity, mesh, num_examples=run.splits.train_size)
  build = run.dataset.builder(config, "train", run.splits.train)  # of the run's seed
  program = steps.make_train_chunk(graphdef, run.dataset.loss(archs.get(config.arch), config),
                                   builder=build)
  base_keys = parallel.put(streams.run_keys(config.seed), parallel.replicated(mesh))
  every, extra = (capacity, config.log_every, config.checkpoint_every, config.eval_every), \
      faults.chunk_ends()
  end_of = lambda step: chunk_end(step, total_steps, every, extra)
  bar = tqdm(total=total_steps, initial=start_step, unit="step", disable=not run.progress,
             dynamic_ncols=True, desc=f"train {config.dataset}")
  schedule = steps.make_schedule(*model_state.schedule_args(config))
  window = metrics.LogWindow(config, total_steps, schedule, write, bar, run.started)
  step = start_step
  upcoming = source.chunk(step, end_of(step) - step) if step < total_steps else None
  with StopOnSignal() as stop, bar:
    while step < total_steps:
      done = end_of(step)
      state = faults.before_step(state, step + 1)
      with jax.transfer_guard("disallow"):  # the chunk's data is on the device already
        state, result = program(state, *upcoming, base_keys)
      if done < total_steps:  # prepared while the device runs this chunk
        upcoming = source.chunk(done, end_of(done) - done)
      result = jax.device_get(result)  # metrics of the whole chunk in one transfer
      if result.bad_step:
        raise NonFiniteError(_nonfinite_message(result, ckpt))
      window.add(result, done)
      step = done
      faults.after_step(done, lambda: stop.requested)
      _periodic_actions(run, done, total_steps, stop, state, ckpt, meta, window, evaluation)
    bar.close()
    if start_step >= total_steps and distributed.is_main():
      print(f"Already trained to step {start_step} (>= {total_steps}); evaluating only.")
    elif start_step < total_steps:
      ckpt.save(total_steps, state, meta)
    final_step = max(start_step, total_steps)
    if distributed.any_process(stop.requested):  # during the last chunk: no final evaluation
      raise TrainingInterrupted(stop.signum or signal.SIGTERM, final_step, str(ckpt.directory))
  return state, final_step, window.training_s


def _periodic_actions(run: _Run, done: int, total_steps: int, stop: StopOnSignal, state,
                      ckpt: Checkpointer, meta: dict[str, Any], window: "metrics.LogWindow",
                      evaluation: _Evaluation) -> None:
  """What is due after the chunk ending at step `done` (before the last step): stop on a
  signal (with a checkpoint), save a checkpoint, evaluate. Seconds spent saving and evaluating
  are logged beside the training throughput, not in it."""
  config = run.config
  # A signal may reach the processes of a multi-process run chunks apart: all stop at the first
  # chunk end where any has it, so that all save the same step together.
  if distributed.any_process(stop.requested) and done < total_steps:
    window.bar.close()
    ckpt.save(done, state, meta)
    # (a process that got no signal itself reports SIGTERM, a scheduler's usual one)
    raise TrainingInterrupted(stop.signum or signal.SIGTERM, done, str(ckpt.directory))
  if done % config.checkpoint_every == 0 and done < total_steps:
    with window.aside("checkpoint_s"):
      ckpt.save(done, state, meta)
  if config.eval_every and done % config.eval_every == 0 and done < total_steps:
    with window.aside("eval_s"):
      accuracy = evaluation(state, done)["test_accuracy"]
    if distributed.is_main():
      tqdm.write(f"step {done}: test accuracy {accuracy:.4%}")


def _nonfinite_message(result: steps.ChunkResult, ckpt: Checkpointer) -> str:
  """The NonFiniteError text of a chunk that stopped at a non-finite step."""
  bad = jax.tree.map(lambda x: x[int(result.steps_run)], result.metrics)  # that step's sums
  loss = float(bad.loss) / max(float(bad.count), 1.0)
  good = ckpt.latest_step()
  kept = (f"the last good checkpoint is step {good} in {ckpt.directory}" if good is not None
          else "no checkpoint had been written yet")
  return (f"non-finite loss, gradient or updated parameters at step {int(result.bad_step)} "
          f"(mean loss {loss:.6g}); stopped without saving it; {kept}. Lower the learning rate "
          "or check the data.")


def _decided_by_the_record(config: TrainConfig, workdir: str | os.PathLike
                           ) -> dict[str, Any] | None:
  """What the run recorded in `workdir` decides before any data is read: ValueError (one line)
  if its checkpoints hold another network than `config` builds on the same dataset; the run's
  final test record if it has trained to `config`'s length and evaluated the test examples
  `config` asks for and its newest checkpoint is whole (nothing to do); None otherwise (start or
  resume)."""
  workdir = Path(workdir).expanduser()
  record = model_state.read_run_record(workdir)
  folder = workdir / "checkpoints"
  saved_steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] \
      if folder.is_dir() else []
  if record is None or not saved_steps:
    return None
  saved, model = record.get("config", {}), record.get("model", {})
  if saved.get("dataset") != config.dataset:
    return None  # a run on other data is never finished for this one (the loop checks the model)
  if {"input_shape", "num_classes"} <= set(model):
    model_state.check_resumable(model, model_state.settings_of(
        config, model["input_shape"], model["num_classes"]), workdir)
  length = ("epochs", "max_steps", "batch_size", "dataset", "train_examples")
  total = config.max_steps if config.max_steps is not None else (
      record.get("total_steps") if all(saved.get(k) == getattr(config, k) for k in length)
      else None)
  last = max(saved_steps)
  if total is None or last < total or saved.get("test_examples") != config.test_examples:
    return None
  if manifest_damage(folder / str(last)) is not None:  # the loop moves it aside and says so
    return None
  final = metrics.final_test_record(workdir, last)
  if final is not None and distributed.is_main():
    print(f"Already trained to step {last} (>= {total}) and evaluated; the run's final test "
          "record follows.")
  return final
