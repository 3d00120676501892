"""Jitted train and eval steps over an NNX (model, optimizer) pair split into graphdef + state.

The state pytree is donated to the train step, so parameters and Adam moments are updated in
place; `nnx.split`/`nnx.merge` happen once outside the loop and inside the traced function only.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capsjax import losses
from capsjax.augment import random_shift_batch
from capsjax.model import CapsNet


# Evaluation batch size per backend, from benchmarks/eval_batch_size.py (README "Evaluation
# batch size"). Accelerators keep large batches (not measured here: no GPU was available).
EVAL_BATCH_SIZE = {"cpu": None}
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
  finite: jnp.ndarray  # 1.0 if the loss (and, in training, every gradient) is finite, else 0.0


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
                           jnp.sum(w * recon), correct, jnp.sum(w),
                           jnp.isfinite(loss).astype(jnp.float32))


def make_train_step(graphdef: Any, *, max_shift: int, recon_weight: float):
  """Returns jitted `step(state, images uint8 [B,H,W,C], labels [B], key) -> (state, metrics)`.

  `state` is `nnx.split((model, optimizer))[1]` and is donated. `metrics.finite` is 0 when the
  loss or any gradient is NaN/Inf (the update is applied regardless: the caller must stop).
  """

  def step(state, images, labels, key):
    model, optimizer = nnx.merge(graphdef, state)
    x = random_shift_batch(key, to_float(images), max_shift)

    def loss_fn(m):
      return _losses(m, x, labels, recon_weight, mask_labels=True)

    grads, metrics = nnx.grad(loss_fn, has_aux=True)(model)
    grads_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    metrics = metrics._replace(finite=metrics.finite * grads_finite)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), metrics

  return jax.jit(step, donate_argnums=0)


def make_eval_step(graphdef: Any, *, recon_weight: float):
  """Returns jitted `step(state, images, labels, valid [B] bool) -> StepMetrics`.

  `graphdef`/`state`: of the model alone (`load_for_eval`), or of the (model, optimizer) pair
  that training uses (the optimizer is not touched). The decoder is masked by the predicted
  class (test-time behaviour); padded examples (valid = False) do not count.
  """

  def step(state, images, labels, valid):
    merged = nnx.merge(graphdef, state)
    model = merged[0] if isinstance(merged, tuple) else merged
    _, metrics = _losses(model, to_float(images), labels, recon_weight, mask_labels=False,
                         valid=valid)
    return metrics

  return jax.jit(step)


def make_reconstruct_step(graphdef: Any):
  """Returns jitted `step(state, images uint8 [N,H,W,C]) -> reconstructions [N,H,W,C]` in [0, 1],
  decoded from the highest-scoring capsule (state as for `make_eval_step`)."""

  def step(state, images):
    merged = nnx.merge(graphdef, state)
    model = merged[0] if isinstance(merged, tuple) else merged
    return model(to_float(images)).reconstructions

  return jax.jit(step)
