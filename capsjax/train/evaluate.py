"""Evaluation: the network's loss and accuracy over test examples, during training and from a
checkpoint (`capsjax eval`).

Both go through `evaluate_indexed`, which runs the compiled evaluation step over example indices
of a test split resident on the device, so a run's in-training evaluation and `capsjax eval` of
its checkpoint read the same examples in the same batches.
"""

import os
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from capsjax.data import datasets
from capsjax.train import archs, metrics, model_state, steps


def evaluate_indexed(eval_step, state, stored, indices: np.ndarray, batch_size: int,
                     progress: bool = False, place: Callable[[Any], Any] | None = None
                     ) -> dict[str, float]:
  """Evaluation over examples `indices` of a dataset built on `stored`.

  The last batch is padded with example 0 and masked, so every batch has one shape (one
  compilation).

  Args:
    eval_step: `steps.make_eval_step(graphdef, loss_fn, builder)`.
    state: the state `eval_step` merges with its graphdef (model, or (model, optimizer)).
    stored: (images, labels) of the stored test split, device arrays.
    indices: [N] int example indices of the set built on `stored`.
    batch_size: examples per compiled batch.
    progress: show a tqdm bar of batches (each batch then waits for its result).
    place: puts each (index, valid) batch on the devices (`capsjax.infra.parallel.batch_placer`);
      None: as is.

  Returns:
    `metrics.summarise` of the batches: {"loss", the loss terms, "accuracy", "examples"}.
  """
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
  return metrics.summarise(results)


def evaluate_checkpoint(workdir: str | os.PathLike, dataset: str | None = None,
                        data_dir: str | None = None, test_examples: int | str | None = None,
                        batch_size: int | None = None, progress: bool = False,
                        step: int | None = None) -> dict[str, Any]:
  """The test record (`metrics.test_record`, plus "dataset") of checkpoint `step` (default:
  newest) of `workdir` on the test set of `dataset` (default: the one it was trained on), e.g.
  a network trained on expanded_mnist evaluated on affnist_style.

  `test_examples`: N (the first N of a stored set, N spread evenly over a built one, as in
  training); "all": every example of the set (MultiMNIST: 10,000,000 pairs); None: the run's own
  evaluation. On the run's own dataset that is the count it recorded (TrainConfig.test_examples;
  a run that recorded none evaluated the whole set, and so does this). On another dataset the
  same number of examples, at most that whole set: the recorded count, or the size of the run's
  own test set if it recorded none (so an expanded_mnist run evaluates 10,000 affnist_style
  examples, not all 320,000). With `progress`, a bar counts the examples out of that total.

  Args:
    workdir: a training run's workdir.
    dataset: a test set name (`capsjax.data.datasets.available("test")`); None: the run's own.
    data_dir: TFDS data_dir; None: $TFDS_DATA_DIR, else the one the run recorded (not read
      for a dataset that reads none: an image folder, arrays).
    test_examples: N, "all" or None, as above.
    batch_size: examples per compiled batch; None: `steps.default_eval_batch_size()`.
    progress: show a progress bar of examples.
    step: the checkpoint; None: the newest complete one.

  Returns:
    {"dataset", "step", "split", "test_accuracy", "test_loss", the network's "test_<term>"
      losses, "test_examples"}.

  Raises:
    ValueError: (one line) an unknown dataset, a count that is not a positive integer or "all",
      more test examples than the set has, a dataset whose inputs differ in shape from what the
      network takes, or a workdir or checkpoint that cannot be read (`model_state.load_for_eval`).
  """
  datasets.check_test_examples(test_examples)
  graphdef, state, meta = model_state.load_for_eval(workdir, step)
  config = model_state.config_from_saved(meta["config"], report=lambda _: None)
  name = datasets.canonical(dataset or config.dataset)
  chosen = datasets.get(name, "test", config)
  settings = meta["model"]
  recorded = model_state.recorded_data_dir(workdir)
  stored, indices = _test_set(chosen, config, name, test_examples, data_dir, recorded)
  build = chosen.builder(config, "test", stored)
  given = datasets.input_shape(build, stored)
  expected = tuple(settings.get("input_shape", (28, 28, 1)))
  if given != expected:
    raise ValueError(f"the checkpoint in {str(workdir)!r} takes {'x'.join(map(str, expected))} "
                     f"inputs (trained on {config.dataset}); dataset {name!r} gives "
                     f"{'x'.join(map(str, given))}."
                     " Evaluate it on a dataset of its input size.")
  loss_fn = chosen.loss(archs.of_settings(settings), config)
  eval_step = steps.make_eval_step(graphdef, loss_fn, build)
  bar = tqdm(total=len(indices), unit="example", desc=f"eval {name} ({len(indices):,} examples)",
             disable=not progress, dynamic_ncols=True, leave=False)

  def counted(*args):  # the step of one batch; the bar advances by its valid examples
    sums = eval_step(*args)
    if progress:
      jax.block_until_ready(sums)
      bar.update(int(np.sum(args[-1])))  # args[-1]: the batch's valid mask (host numpy)
    return sums

  with bar:
    result = evaluate_indexed(counted, state, jax.device_put((stored.images, stored.labels)),
                              indices, batch_size or steps.default_eval_batch_size())
  return {"dataset": name, **metrics.test_record(int(meta["step"]), result)}


def _test_set(chosen, config, name: str, test_examples, data_dir, recorded):
  """(the stored test split, the example indices evaluated) of dataset `chosen` (called `name`)
  for a run of `config`, as `evaluate_checkpoint` describes them."""
  count, at_most = _test_count(config, name, test_examples, data_dir, recorded)
  stored = chosen.load("test", datasets.data_dir_for(chosen, data_dir, recorded),
                       count if chosen.host_batches and not at_most else None)
  size = chosen.size("test", stored)
  if at_most:
    count = min(count, size)
    size = count if chosen.host_batches else size  # a stored set: its first `count`
  return stored, datasets.subset(size, count, f"the {name} test set")


def _test_count(config, name: str, test_examples: int | str | None, data_dir, recorded
                ) -> tuple[int | None, bool]:
  """(count, at_most) of `evaluate_checkpoint`: count None is the whole set; at_most marks a
  run's default carried over to another dataset, to be cut to that set's size."""
  if test_examples is not None:
    return (None if test_examples == "all" else test_examples), False
  at_most = name != config.dataset
  count = config.test_examples
  if at_most and count is None:  # the run evaluated the whole of its own test set
    own = datasets.get(config.dataset, "test", config)
    count = own.size("test", own.load("test", datasets.data_dir_for(own, data_dir, recorded),
                                      None))
  return count, at_most


def evaluate_ensemble(workdirs: list[str | os.PathLike], dataset: str | None = None,
                      data_dir: str | None = None, test_examples: int | str | None = None,
                      batch_size: int | None = None, progress: bool = False) -> dict[str, Any]:
  """Several runs' newest checkpoints evaluated on one test set, each alone and together: the
  ensemble's class scores are the sum of the networks' scores (capsule lengths, or the rule's
  activations), its prediction their argmax, as the official CapsNet code evaluates its seven
  CIFAR-10 models (`experiment.py`, `--num_trials=7`: the lengths of every model summed).

  The test set is the first run's (or `dataset`), its examples chosen as `evaluate_checkpoint`
  chooses them for the first run; each network sees them built by its own run's test-time
  processing (`capsjax.data.augment`).

  Args:
    workdirs: two or more training runs' workdirs.
    dataset, data_dir, test_examples, batch_size, progress: as `evaluate_checkpoint`.

  Returns:
    {"dataset", "test_examples", "models": [{"workdir", "step", "test_accuracy"}, ...],
      "ensemble_test_accuracy"}.

  Raises:
    ValueError: (one line) fewer than two workdirs, one that cannot be read, networks of other
      input shapes or class counts than the first's (the workdir named), or a test set whose
      examples have more than one label (MultiMNIST).
  """
  if len(workdirs) < 2:
    raise ValueError(f"an ensemble needs at least two --workdir, got {len(workdirs)}.")
  datasets.check_test_examples(test_examples)
  runs = []
  for workdir in workdirs:
    graphdef, state, meta = model_state.load_for_eval(workdir, report=lambda _: None)
    config = model_state.config_from_saved(meta["config"], report=lambda _: None)
    runs.append((str(workdir), graphdef, state, meta, config))
  first_dir, _, _, first_meta, first = runs[0]
  sizes = lambda meta: (tuple(meta["model"].get("input_shape", (28, 28, 1))),
                        meta["model"].get("num_classes", 10))
  for workdir, _, _, meta, _ in runs[1:]:
    if sizes(meta) != sizes(first_meta):
      (shape, k), (shape0, k0) = sizes(meta), sizes(first_meta)
      raise ValueError(f"the network in {workdir!r} takes {'x'.join(map(str, shape))} inputs "
                       f"and {k} classes, the one in {first_dir!r} {'x'.join(map(str, shape0))} "
                       f"and {k0}; an ensemble needs networks of one input size and class count.")
  name = datasets.canonical(dataset or first.dataset)
  chosen = datasets.get(name, "test", first)
  recorded = model_state.recorded_data_dir(first_dir)
  stored, indices = _test_set(chosen, first, name, test_examples, data_dir, recorded)
  batch_size = batch_size or steps.default_eval_batch_size()
  device_stored = jax.device_put((stored.images, stored.labels))
  total, labels, models = None, None, []
  bar = tqdm(total=len(runs) * len(indices), unit="example", disable=not progress,
             desc=f"ensemble of {len(runs)} on {name}", dynamic_ncols=True, leave=False)
  with bar:
    for workdir, graphdef, state, meta, config in runs:
      build = datasets.get(name, "test", config).builder(config, "test", stored)
      scores, labels = _scores(graphdef, state, archs.of_settings(meta["model"]), build,
                               device_stored, indices, batch_size, bar)
      models.append({"workdir": workdir, "step": int(meta["step"]),
                     "test_accuracy": float(np.mean(np.argmax(scores, -1) == labels))})
      total = scores if total is None else total + scores
  return {"dataset": name, "test_examples": len(indices), "models": models,
          "ensemble_test_accuracy": float(np.mean(np.argmax(total, -1) == labels))}


def _scores(graphdef, state, arch, build, stored, indices: np.ndarray, batch_size: int, bar
            ) -> tuple[np.ndarray, np.ndarray]:
  """([N, K] class scores, [N] labels) of one network over test examples `indices`, in
  fixed-size batches (the last padded)."""

  @jax.jit
  def step(state, images, labels, index):
    x, targets = build(None, images, labels, index)
    if isinstance(targets, tuple):
      raise ValueError("an ensemble is evaluated on single-label test sets; this one gives "
                       f"{len(targets)} labels per example.")
    return steps.outputs_of(graphdef, arch.outputs, state, x).scores, targets

  parts, targets = [], []
  for start in range(0, len(indices), batch_size):
    part = indices[start:start + batch_size]
    index = np.zeros(batch_size, np.int32)
    index[:len(part)] = part
    scores, labels = jax.device_get(step(state, *stored, index))
    parts.append(scores[:len(part)])
    targets.append(labels[:len(part)])
    bar.update(len(part))
  return np.concatenate(parts), np.concatenate(targets)
