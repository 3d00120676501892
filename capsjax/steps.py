"""Jitted train and eval steps over an NNX (model, optimizer) pair split into graphdef + state.

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

from capsjax import losses
from capsjax.augment import random_shift_batch
from capsjax.model import CapsNet, check_labels


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
  margin_loss: jnp.ndarray
  reconstruction_loss: jnp.ndarray
  correct: jnp.ndarray
  count: jnp.ndarray
  # Train step only (None from the eval step): 1.0 if the loss and every gradient are finite.
  finite: jnp.ndarray | None = None


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


def _losses(model: CapsNet, images, labels, recon_weight, mask_labels, valid=None):
  """Training loss (mean over the batch) and StepMetrics summed over the `valid` examples."""
  out = model(images, labels if mask_labels else None)
  onehot = jax.nn.one_hot(labels, model.num_classes)
  margin = losses.margin_loss(out.lengths, onehot)
  recon = losses.reconstruction_loss(out.reconstructions, images)
  loss = losses.total_loss(margin, recon, recon_weight)
  w = jnp.ones_like(margin) if valid is None else valid.astype(margin.dtype)
  correct = jnp.sum(w * (jnp.argmax(out.lengths, -1) == labels))
  return loss, StepMetrics(jnp.sum(w * (margin + recon_weight * recon)), jnp.sum(w * margin),
                           jnp.sum(w * recon), correct, jnp.sum(w))


def _checking_labels(jitted: Callable, graphdef: Any) -> Callable:
  """`jitted(state, images, labels, ...)` preceded by `check_labels` on the host.

  The class count comes from the CapsNet in `graphdef` (alone or in a tuple such as (model,
  optimizer)), merged once on the first call; `.jitted` is the compiled function itself (for
  `lower`, `eval_shape`, ...).
  """
  num_classes = []

  def step(state, images, labels, *args):
    if not num_classes:
      merged = nnx.merge(graphdef, state)
      parts = merged if isinstance(merged, (tuple, list)) else (merged,)
      num_classes.append(next(m.num_classes for m in parts if isinstance(m, CapsNet)))
    check_labels(labels, num_classes[0])
    return jitted(state, images, labels, *args)

  step.jitted = jitted
  return step


def make_train_step(graphdef: Any, *, max_shift: int, recon_weight: float):
  """Returns jitted `step(state, images uint8 [B,H,W,C], labels [B], key) -> (state, metrics)`.

  `state` is `nnx.split((model, optimizer))[1]` and is donated. `metrics.finite` is 0 when the
  loss or any gradient is NaN/Inf (the update is applied regardless: the caller must stop).
  Labels outside [0, num_classes) raise ValueError before the step runs.
  """

  def step(state, images, labels, key):
    model, optimizer = nnx.merge(graphdef, state)
    x = random_shift_batch(key, to_float(images), max_shift)

    def loss_fn(m):
      return _losses(m, x, labels, recon_weight, mask_labels=True)

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                for x in (loss, *jax.tree.leaves(grads))]))
    metrics = metrics._replace(finite=finite.astype(jnp.float32))
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), metrics

  return _checking_labels(jax.jit(step, donate_argnums=0), graphdef)


def make_eval_step(graphdef: Any, *, recon_weight: float):
  """Returns jitted `step(state, images, labels, valid [B] bool) -> StepMetrics`.

  `graphdef`/`state`: of the model alone (`load_for_eval`), or of the (model, optimizer) pair
  that training uses (the optimizer is not touched). The decoder is masked by the predicted
  class (test-time behaviour); padded examples (valid = False) do not count. Labels outside
  [0, num_classes) raise ValueError.
  """

  def step(state, images, labels, valid):
    merged = nnx.merge(graphdef, state)
    model = merged[0] if isinstance(merged, tuple) else merged
    _, metrics = _losses(model, to_float(images), labels, recon_weight, mask_labels=False,
                         valid=valid)
    return metrics

  return _checking_labels(jax.jit(step), graphdef)


def make_reconstruct_step(graphdef: Any):
  """Returns jitted `step(state, images uint8 [N,H,W,C]) -> reconstructions [N,H,W,C]` in [0, 1],
  decoded from the highest-scoring capsule (state as for `make_eval_step`)."""

  def step(state, images):
    merged = nnx.merge(graphdef, state)
    model = merged[0] if isinstance(merged, tuple) else merged
    return model(to_float(images)).reconstructions

  return jax.jit(step)
