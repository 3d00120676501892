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
  correct = jnp.sum(w * (jnp.argmax(out.scores, -1) == labels))
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


def make_train_step(graphdef: Any, loss_fn: LossFn, transform: Transform | None = None):
  """Returns jitted `step(state, images uint8 [B,H,W,C], labels [B], key) -> (state, metrics)`.

  `state` is `nnx.split((model, optimizer))[1]` and is donated; `loss_fn` is the network's
  (`capsjax.archs.get(name).loss(config)`), `transform` the data augmentation (None: none).
  `key` feeds the transform and, folded, the loss (dropout). `metrics.finite` is 0 when the
  loss or any gradient is NaN/Inf (the update is applied regardless: the caller must stop).
  Labels outside [0, num_classes) raise ValueError before the step runs.
  """

  def step(state, images, labels, key):
    model, optimizer = nnx.merge(graphdef, state)
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

  return _checking_labels(jax.jit(step, donate_argnums=0), graphdef)


def make_eval_step(graphdef: Any, loss_fn: LossFn):
  """Returns jitted `step(state, images, labels, valid [B] bool) -> StepMetrics`.

  `graphdef`/`state`: of the model alone (`load_for_eval`), or of the (model, optimizer) pair
  that training uses (the optimizer is not touched). Test-time behaviour (CapsNet: decoder
  masked by the predicted class); padded examples (valid = False) do not count. Labels outside
  [0, num_classes) raise ValueError.
  """

  def step(state, images, labels, valid):
    model = _model_of(nnx.merge(graphdef, state))
    _, metrics = _objective(loss_fn, model, to_float(images), labels, train=False, valid=valid)
    return metrics

  return _checking_labels(jax.jit(step), graphdef)


def make_outputs_step(graphdef: Any, outputs_fn: Callable[[nnx.Module, jnp.ndarray], Outputs]):
  """Returns jitted `step(state, images uint8 or float [N,H,W,C]) -> Outputs` (the network's
  `Arch.outputs`: scores, capsules, reconstructions; state as for `make_eval_step`)."""

  def step(state, images):
    return outputs_fn(_model_of(nnx.merge(graphdef, state)), to_float(images))

  return jax.jit(step)
