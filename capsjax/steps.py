"""Jitted train and eval steps over an NNX (model, optimizer) pair split into graphdef + state.

The steps know nothing of the network: its loss and outputs come from its `capsjax.archs.Arch`,
the data augmentation is a `Transform` passed in.

The state pytree is donated to the train step, so parameters and Adam moments are updated in
place; `nnx.split`/`nnx.merge` happen once outside the loop and inside the traced function only.

Both steps check the labels on the host before the compiled call (`CapsNet` cannot raise on traced
labels): the labels are already host numpy arrays in the training loop, so the check reads no
device value and adds no synchronisation, only a min/max over B integers.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capsjax.archs import LossFn, Outputs
from capsjax.model import check_labels


# Evaluation batch size per backend, from benchmarks/eval_batch_size.py (README "Evaluation
# batch size"): on the 2-core CPU, 2026-11-25, batch 100 had the best median (181 images/s; 16 to
# 500 all within 163-181, about the run-to-run spread). Accelerators keep large batches (not
# measured here: no GPU was available).
EVAL_BATCH_SIZE = {"cpu": 100}
DEFAULT_EVAL_BATCH_SIZE = 500


def default_eval_batch_size(backend: str | None = None) -> int:
  """The evaluation batch size for `backend` (default: JAX's default backend)."""
  return EVAL_BATCH_SIZE.get(backend or jax.default_backend()) or DEFAULT_EVAL_BATCH_SIZE


class StepMetrics(NamedTuple):
  """Batch sums (not means), so that eval can add them over batches of unequal size."""

  loss: jnp.ndarray
  terms: dict[str, jnp.ndarray]  # the network's loss terms (CapsNet: margin/reconstruction)
  correct: jnp.ndarray
  count: jnp.ndarray
  # Train step only (None from the eval step): 1.0 if the loss and every gradient are finite.
  finite: jnp.ndarray | None = None


# A data transform inside the compiled step: (key, images float [B,H,W,C], labels [B]) ->
# (images, labels), pure, so that it runs on any backend (CapsNet's random shift: `augment`).
Transform = Callable[[jax.Array, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]


def make_schedule(learning_rate: float, decay_rate: float, decay_steps: int) -> optax.Schedule:
  """lr * decay_rate ** floor(step / decay_steps): the official code's staircase decay."""
  return optax.exponential_decay(learning_rate, decay_steps, decay_rate, staircase=True)


def make_optimizer(learning_rate: float, decay_rate: float, decay_steps: int
                   ) -> optax.GradientTransformation:
  """Adam with `make_schedule`'s learning rate."""
  return optax.adam(make_schedule(learning_rate, decay_rate, decay_steps))


def to_float(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [0, 1]; float input is passed through."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _model_of(merged: Any) -> nnx.Module:
  """The network of a merged state: the model alone, or the first of (model, optimizer)."""
  return merged[0] if isinstance(merged, (tuple, list)) else merged


def _objective(loss_fn: LossFn, model, images, labels, *, train: bool, key=None, valid=None):
  """Training loss (mean over the batch) and StepMetrics summed over the `valid` examples."""
  out = loss_fn(model, images, labels, train=train, key=key)
  w = jnp.ones_like(out.total) if valid is None else valid.astype(out.total.dtype)
  right = jnp.argmax(out.scores, -1) == labels if out.correct is None else out.correct
  correct = jnp.sum(w * right)
  return jnp.mean(out.total), StepMetrics(
      jnp.sum(w * out.total), {k: jnp.sum(w * v) for k, v in out.terms.items()}, correct,
      jnp.sum(w))


def _checking_labels(jitted: Callable, graphdef: Any) -> Callable:
  """`jitted(state, images, labels, ...)` preceded by `check_labels` on the host.

  The class count comes from the network in `graphdef` (alone or first of (model, optimizer)),
  merged once on the first call; `.jitted` is the compiled function itself (for `lower`,
  `eval_shape`, ...).
  """
  num_classes = []

  def step(state, images, labels, *args):
    if not num_classes:
      num_classes.append(_model_of(nnx.merge(graphdef, state)).num_classes)
    check_labels(labels, num_classes[0])
    return jitted(state, images, labels, *args)

  step.jitted = jitted
  return step


def _train_update(graphdef: Any, loss_fn: LossFn, transform: Transform | None):
  """The pure training step `(state, images, labels, key) -> (state, metrics)` (see
  `make_train_step`), shared by the one-step and the many-step (`make_train_chunk`) programs."""

  def update(state, images, labels, key):
    # copy=True: the update must leave `state` itself unchanged (a chunk keeps it when the step
    # turns out non-finite); merging without it would share and mutate its Variables.
    model, optimizer = nnx.merge(graphdef, state, copy=True)
    x = to_float(images)
    if transform is not None:
      x, labels = transform(key, x, labels)

    def loss_fn_of(m):
      return _objective(loss_fn, m, x, labels, train=True, key=jax.random.fold_in(key, 1))

    (loss, metrics), grads = nnx.value_and_grad(loss_fn_of, has_aux=True)(model)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                                for g in (loss, *jax.tree.leaves(grads))]))
    metrics = metrics._replace(finite=finite.astype(jnp.float32))
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), metrics

  return update


def make_train_step(graphdef: Any, loss_fn: LossFn, transform: Transform | None = None):
  """Returns jitted `step(state, images uint8 [B,H,W,C], labels [B], key) -> (state, metrics)`.

  `state` is `nnx.split((model, optimizer))[1]` and is donated; `loss_fn` is the network's
  (`capsjax.archs.get(name).loss(config)`), `transform` the data augmentation (None: none).
  `key` feeds the transform and, folded, the loss (dropout). `metrics.finite` is 0 when the
  loss or any gradient is NaN/Inf (the update is applied regardless: the caller must stop).
  Labels outside [0, num_classes) raise ValueError before the step runs.
  """
  update = _train_update(graphdef, loss_fn, transform)
  return _checking_labels(jax.jit(update, donate_argnums=0), graphdef)


class ChunkResult(NamedTuple):
  """What a `make_train_chunk` program returns besides the state, in one transfer.

  `metrics` has a leading axis of K (the chunk's capacity, `indices.shape[0]`): row i holds step
  i's metrics for i < `steps_run`; after a non-finite step, row `steps_run` holds its metrics;
  the other rows are zeros. `bad_step` is the 1-based global step whose loss or gradient was
  non-finite (its update was not applied and the chunk stopped there), or 0.
  """

  metrics: StepMetrics
  steps_run: jnp.ndarray
  bad_step: jnp.ndarray


def make_train_chunk(graphdef: Any, loss_fn: LossFn, transform: Transform | None = None, *,
                     examples: Callable | None = None):
  """Returns jitted `chunk(state, images [N,H,W,C], labels [N], indices [K,B] int, first_step,
  num_steps, base_key) -> (state, ChunkResult)`: up to K training steps in one dispatch.

  Step i (0 <= i < num_steps, both scalars on the device, num_steps <= K) trains on
  `examples(key, images, labels, indices[i])` with key `fold_in(base_key, first_step + i)`
  (`capsjax.datasets.Examples`; default: `gather(transform)`, the rows `images[indices[i]]`
  transformed, exactly the batch and key that `make_train_step` would be given for global step
  first_step + i). `images`/`labels` are the stored training split resident on the device; or,
  with `indices` None, this chunk's rows themselves, [K, B, H, W, C] / [K, B], step i building
  its batch from `images[i]` as a split of B rows. A step whose loss or
  gradient is non-finite leaves the state as it was and ends the chunk (`ChunkResult.bad_step`),
  so the returned state is the last good one. One compilation serves every num_steps <= K (a
  `while_loop`); `state` is donated.
  """
  if examples is None:
    from capsjax.datasets import gather  # (datasets imports this module)
    examples = gather(transform)
  update = _train_update(graphdef, loss_fn, None)

  def chunk(state, images, labels, indices, first_step, num_steps, base_key):
    def key_of(i):
      return jax.random.fold_in(base_key, first_step + i)

    def batch(i):
      if indices is None:
        rows = jnp.arange(labels.shape[1], dtype=jnp.int32)
        return examples(key_of(i), images[i], labels[i], rows)
      return examples(key_of(i), images, labels, indices[i])

    shapes = jax.eval_shape(update, state, *batch(0), key_of(0))[1]
    capacity = (labels if indices is None else indices).shape[0]
    buffer = jax.tree.map(lambda s: jnp.zeros((capacity, *s.shape), s.dtype), shapes)

    def not_done(carry):
      _, i, bad, _ = carry
      return (i < num_steps) & (bad == 0)

    def body(carry):
      state, i, bad, buffer = carry
      new_state, metrics = update(state, *batch(i), key_of(i))
      ok = metrics.finite > 0
      state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
      buffer = jax.tree.map(lambda b, m: b.at[i].set(m), buffer, metrics)
      bad = jnp.where(ok, 0, first_step + i + 1).astype(bad.dtype)
      return state, i + jnp.where(ok, 1, 0).astype(i.dtype), bad, buffer

    zero = jnp.zeros((), jnp.int32)
    state, steps_run, bad, buffer = jax.lax.while_loop(
        not_done, body, (state, zero, zero, buffer))
    return state, ChunkResult(buffer, steps_run, bad)

  return jax.jit(chunk, donate_argnums=0)


def make_eval_step(graphdef: Any, loss_fn: LossFn, examples: Callable | None = None):
  """Returns jitted `step(state, images, labels, valid [B] bool) -> StepMetrics`.

  `graphdef`/`state`: of the model alone (`load_for_eval`), or of the (model, optimizer) pair
  that training uses (the optimizer is not touched). Test-time behaviour (CapsNet: decoder
  masked by the predicted class); padded examples (valid = False) do not count. Labels outside
  [0, num_classes) raise ValueError.

  With `examples` (`capsjax.datasets.Examples`): `step(state, images [N,...], labels [N],
  index [B], valid [B]) -> StepMetrics` over `examples(None, images, labels, index)`, the stored
  test split resident on the device (checked when it was loaded, so no label check here).
  """

  def step(state, images, labels, valid):
    model = _model_of(nnx.merge(graphdef, state))
    _, metrics = _objective(loss_fn, model, to_float(images), labels, train=False, valid=valid)
    return metrics

  if examples is not None:
    def indexed(state, images, labels, index, valid):
      x, targets = examples(None, images, labels, index)
      return step(state, x, targets, valid)

    return jax.jit(indexed)
  return _checking_labels(jax.jit(step), graphdef)


def make_outputs_step(graphdef: Any, outputs_fn: Callable[[nnx.Module, jnp.ndarray], Outputs]):
  """Returns jitted `step(state, images uint8 or float [N,H,W,C]) -> Outputs` (the network's
  `Arch.outputs`: scores, capsules, reconstructions; state as for `make_eval_step`)."""

  def step(state, images):
    return outputs_fn(_model_of(nnx.merge(graphdef, state)), to_float(images))

  return jax.jit(step)
