"""What a run writes about itself: `metrics.jsonl` records (one JSON object per line) and the
sums that become them.

A train record holds the mean loss, loss terms and accuracy of the steps since the last one; a
test record the same over the test examples. `capsjax viz` and TensorBoard read them back.
"""

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from capsjax.infra.workdir import StorageError, append_line
from capsjax.train import steps

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
    """Appends `record` (JSON-serialisable) as one line, then passes it to `also`.

    Raises:
      StorageError: the line could not be written (or `guard` failed), ending with the
        `last_checkpoint()` phrase when one was given.
    """
    try:
      self.guard()
      append_line(self.path, json.dumps(record))
    except StorageError as e:
      if self.last_checkpoint is None:
        raise
      raise StorageError(f"{e}; {self.last_checkpoint()}") from e
    if self.also is not None:
      self.also.write(record)


def summarise(metrics: list[steps.StepMetrics]) -> dict[str, Any]:
  """Sums batch metrics (scalars, or [K] rows of a chunk) on the host and turns them into means:
  {"loss", <the network's loss terms>, "accuracy", "examples"}."""
  total = jax.tree.map(lambda *xs: float(sum(np.sum(x) for x in xs)), *jax.device_get(metrics))
  n = max(total.count, 1.0)
  return {"loss": total.loss / n, **{k: v / n for k, v in total.terms.items()},
          "accuracy": total.correct / n, "examples": int(total.count)}


def test_record(step: int, result: dict[str, Any]) -> dict[str, Any]:
  """The metrics.jsonl / CLI record of an `evaluate_indexed` result on the test split."""
  terms = {f"test_{k}": v for k, v in result.items() if k not in ("loss", "accuracy", "examples")}
  return {"step": step, "split": "test", "test_accuracy": result["accuracy"],
          "test_loss": result["loss"], **terms, "test_examples": result["examples"]}


def train_record(step: int, summary: dict[str, Any]) -> dict[str, Any]:
  """The metrics.jsonl record of the train steps summarised in `summary` (see `summarise`)."""
  terms = {k: v for k, v in summary.items() if k not in ("loss", "accuracy", "examples")}
  return {"step": step, "split": "train", "loss": summary["loss"], **terms,
          "train_accuracy": summary["accuracy"]}




class LogWindow:
  """The training steps since the last train record, and the record written when one is due
  (every `config.log_every` steps and at the last step).

  A record's `images_per_sec` counts training alone (and `training_s` sums it over the run): the
  seconds spent saving checkpoints and evaluating within the window (`aside`) are taken out and
  logged beside it (`checkpoint_s`, `eval_s`, in seconds). `learning_rate` is `schedule`'s value
  at the window's last step.

  Args:
    config: the run's TrainConfig (batch_size, log_every).
    total_steps: the run's last step (always logged).
    schedule: the learning-rate schedule, `schedule(optimizer step)`.
    write: writes one record (a metrics.jsonl line).
    bar: the tqdm progress bar, advanced by the steps run.
    started: `time.time()` at the run's start (for `elapsed_s`).
  """

  def __init__(self, config, total_steps: int, schedule: Callable[[int], Any],
               write: Callable[[dict[str, Any]], None], bar, started: float):
    self.config, self.total_steps, self.schedule = config, total_steps, schedule
    self.write, self.bar, self.started = write, bar, started
    self.training_s = 0.0  # seconds spent training in all windows so far
    self._reset()

  def _reset(self) -> None:
    self.pending: list[steps.StepMetrics] = []
    self.start, self.images = time.time(), 0
    self.seconds_aside = {"checkpoint_s": 0.0, "eval_s": 0.0}

  def add(self, result: steps.ChunkResult, done: int) -> None:
    """Takes the metrics of a chunk (on the host) that ended at step `done`; writes the train
    record if one is due there and advances the progress bar."""
    ran = int(result.steps_run)
    self.pending.append(jax.tree.map(lambda x: x[:ran], result.metrics))
    self.images += ran * self.config.batch_size
    if done % self.config.log_every == 0 or done == self.total_steps:
      summary = summarise(self.pending)
      training_s = time.time() - self.start - sum(self.seconds_aside.values())
      self.training_s += training_s
      rate = self.images / max(training_s, 1e-9)
      self.write({**train_record(done, summary), "images_per_sec": rate, **self.seconds_aside,
                  "learning_rate": float(self.schedule(done - 1)),
                  "elapsed_s": time.time() - self.started})
      self._reset()
      self.bar.set_postfix(loss=f"{summary['loss']:.4f}", acc=f"{summary['accuracy']:.3f}",
                           img_s=f"{rate:.0f}")
    self.bar.update(ran)

  @contextlib.contextmanager
  def aside(self, name: str):
    """Counts the seconds of the block as `name` ("checkpoint_s" or "eval_s"), not training."""
    t0 = time.time()
    try:
      yield
    finally:
      self.seconds_aside[name] += time.time() - t0


def read_records(path: Path) -> tuple[list[dict], list[dict]]:
  """(train records, test records) of a metrics.jsonl, by step; a step recorded more than once
  (a resumed run) keeps its last record.

  Raises:
    OSError: the file cannot be read.
    ValueError: a line is not JSON.
  """
  train, test = {}, {}
  for line in Path(path).read_text().splitlines():
    record = json.loads(line)
    (train if record.get("split") == "train" else test)[record.get("step")] = record
  return [train[k] for k in sorted(train)], [test[k] for k in sorted(test)]


def final_test_record(workdir: Path, step: int) -> dict[str, Any] | None:
  """The last test record of `step` in WORKDIR/metrics.jsonl, or None (no such record, no
  file, or a line that is not JSON: then the run evaluates again)."""
  try:
    _, test = read_records(Path(workdir) / "metrics.jsonl")
  except (OSError, ValueError):
    return None
  return next((r for r in test if r.get("step") == step), None)
