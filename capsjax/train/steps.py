"""Jitted train and eval steps over an NNX (model, optimizer) pair split into graphdef + state.

The steps know nothing of the network: its loss and outputs come from its
`capsjax.train.archs.Arch`, the batch (with its augmentation) from the dataset's `ExampleBuilder`
passed in (`capsjax.data.dataset`; a transform such as the random shift runs inside it).

The state pytree is donated to the train step, so parameters and Adam moments are updated in
place; `nnx.split`/`nnx.merge` happen once outside the loop and inside the traced function only.

The training loop runs `make_train_chunk`, K steps per dispatch on labels already on the device
(the resident split, or a chunk of host batches), and evaluates with `make_eval_step` over the
test split on the device. Neither checks labels per step (`CapsNet` cannot raise on traced
labels): each split's labels are checked once, when the split is loaded
(`capsjax.data.storage.Split` runs `check_batch`).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capsjax.core import streams
from capsjax.core.streams import StepKeys
from capsjax.nn.inputs import to_float  # uint8 /255, float as float32, others refused
from capsjax.nn.objective import LossFn, Outputs


# Evaluation batch size per backend, chosen with benchmarks/eval_batch_size.py on the path
# `capsjax eval` runs (measured figures: docs/results.md). Backends without an entry here
# (accelerators) keep a large batch, DEFAULT_EVAL_BATCH_SIZE.
EVAL_BATCH_SIZE = {"cpu": 100}
DEFAULT_EVAL_BATCH_SIZE = 500


def default_eval_batch_size(backend: str | None = None) -> int:
  """The evaluation batch size for `backend` (default: JAX's default backend)."""
  return EVAL_BATCH_SIZE.get(backend or jax.default_backend()) or DEFAULT_EVAL_BATCH_SIZE


class StepMetrics(NamedTuple):
  """Batch sums (not means), so that eval can add them over batches of unequal size.

  Attributes:
    loss: the summed per-example objective (`Losses.total`).
    terms: {name: sum} of the network's loss terms (CapsNet: margin_loss, reconstruction_loss).
    correct: the number of examples counted right.
    count: the number of (valid) examples.
    finite: train step only (None from the eval step): 1.0 if the loss, every gradient and the
      updated state are finite, else 0.0.
  """

  loss: jnp.ndarray
  terms: dict[str, jnp.ndarray]  # the network's loss terms (CapsNet: margin/reconstruction)
  correct: jnp.ndarray
  count: jnp.ndarray
  # Train step only (None from the eval step): 1.0 if the loss and every gradient are finite.
  finite: jnp.ndarray | None = None


# A data transform inside the compiled step: (key, images float [B,H,W,C], labels [B]) ->
# (images, labels), pure, so that it runs on any backend (CapsNet's random shift: `augment`).
Transform = Callable[[jax.Array, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]


def make_schedule(learning_rate: float, decay_rate: float, decay_steps: int,
                  staircase: bool = True, min_learning_rate: float = 0.0) -> optax.Schedule:
  """The learning rate at optimizer step t (0-based): max(lr * decay_rate ** e, min_lr), with
  e = floor(t / decay_steps) (`staircase`) or t / decay_steps (continuous).

  The official code (Sarasra/models, research/capsules/models/model.py) uses the continuous
  form, `tf.train.exponential_decay` without `staircase`, floored by `tf.maximum(lr, 1e-6)`:
  `make_schedule(1e-3, 0.96, 2000, staircase=False, min_learning_rate=1e-6)`.
  """
  return optax.exponential_decay(learning_rate, decay_steps, decay_rate, staircase=staircase,
                                 end_value=min_learning_rate if min_learning_rate > 0 else None)


def make_optimizer(learning_rate: float, decay_rate: float, decay_steps: int,
                   staircase: bool = True, min_learning_rate: float = 0.0
                   ) -> optax.GradientTransformation:
  """Adam with `make_schedule`'s learning rate."""
  return optax.adam(make_schedule(learning_rate, decay_rate, decay_steps, staircase,
                                  min_learning_rate))


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


def _train_update(graphdef: Any, loss_fn: LossFn):
  """The pure training step `(state, images, targets, keys: StepKeys) -> (state, metrics)` on
  a built batch (`capsjax.data.dataset.ExampleBuilder`, which used `keys.data`); `keys.dropout`
  feeds the loss (dropout): another stream of the run's seed (`capsjax.core.streams`).
  `metrics.finite` is 0 when the loss, a gradient, or a parameter or optimizer-state value after
  the update is NaN/Inf: so the step that breaks the parameters (e.g. an infinite learning rate)
  is the one flagged, not the next.
  """

  def update(state, images, labels, keys: StepKeys):
    # copy=True: the update must leave `state` itself unchanged (a chunk keeps it when the step
    # turns out non-finite); merging without it would share and mutate its Variables.
    model, optimizer = nnx.merge(graphdef, state, copy=True)
    x = to_float(images)

    def loss_fn_of(m):
      return _objective(loss_fn, m, x, labels, train=True, key=keys.dropout)

    (loss, metrics), grads = nnx.value_and_grad(loss_fn_of, has_aux=True)(model)
    with jax.named_scope("optimizer"):
      optimizer.update(model, grads)
    new_state = nnx.state((model, optimizer))
    with jax.named_scope("finite_check"):
      checked = [loss, *jax.tree.leaves(grads),
                 *(x for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.inexact))]
      finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in checked]))
    return new_state, metrics._replace(finite=finite.astype(jnp.float32))

  return update


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


def make_train_chunk(graphdef: Any, loss_fn: LossFn, builder: Callable):
  """Returns jitted `chunk(state, images [N,H,W,C], labels [N], indices [K,B] int, first_step,
  num_steps, base_keys) -> (state, ChunkResult)`: up to K training steps in one dispatch.

  `base_keys` is the run's `streams.run_keys(seed)`; global step s = first_step + i (0 <= i <
  num_steps, both scalars on the device, num_steps <= K) has keys `k = streams.at_step(base_keys,
  s)`, trains on `builder(k.data, images, labels, indices[i])`
  (`capsjax.data.dataset.ExampleBuilder`, e.g. `gather(augment.shift_transform(2))`: the rows
  `images[indices[i]]`, shifted) and draws its dropout from `k.dropout`. `images`/`labels` are the
  stored training split resident on the device; or, with `indices` None, this chunk's rows
  themselves, [K, B, H, W, C] / [K, B], step i building its batch from `images[i]` as a split of B
  rows. A step whose loss, gradient or updated state is non-finite leaves the state as it was and
  ends the chunk (`ChunkResult.bad_step`), so the returned state is the last good one. One
  compilation serves every num_steps <= K: a loop of exactly K iterations (a trip count XLA
  can prove) in which step i runs only while i < num_steps and no step was non-finite (on CPU
  the others are skipped by a branch; elsewhere they are computed and dropped, which costs
  K - num_steps steps of a short chunk but no host round trip per step); `state` is donated.
  """
  update = _train_update(graphdef, loss_fn)

  def chunk(state, images, labels, indices, first_step, num_steps, base_keys):
    def key_of(i):
      return streams.at_step(base_keys, first_step + i)

    @jax.named_scope("batch")
    def batch(i):
      if indices is None:
        rows = jnp.arange(labels.shape[1], dtype=jnp.int32)
        return builder(key_of(i).data, images[i], labels[i], rows)
      return builder(key_of(i).data, images, labels, indices[i])

    shapes = jax.eval_shape(update, state, *batch(0), key_of(0))[1]
    capacity = (labels if indices is None else indices).shape[0]
    buffer = jax.tree.map(lambda s: jnp.zeros((capacity, *s.shape), s.dtype), shapes)

    def run_step(i, carry, active=True):
      """Step i, kept where `active` and finite; an active non-finite step leaves the state as
      it was and is named by `bad`; an inactive one leaves the carry unchanged."""
      state, steps_run, bad, buffer = carry
      new_state, metrics = update(state, *batch(i), key_of(i))
      ok = metrics.finite > 0
      apply = active & ok
      state = jax.tree.map(lambda new, old: jnp.where(apply, new, old), new_state, state)
      buffer = jax.tree.map(lambda b, m: b.at[i].set(jnp.where(active, m, b[i])), buffer,
                            metrics)
      bad = jnp.where(active & ~ok, first_step + i + 1, bad).astype(bad.dtype)
      return state, steps_run + apply.astype(steps_run.dtype), bad, buffer

    def skipping(i, carry, active):  # CPU: a branch costs nothing, so inactive steps are skipped
      return jax.lax.cond(active, run_step, lambda i, carry: carry, i, carry)

    def masking(i, carry, active):
      # Accelerators: no branch (XLA:GPU copies a conditional's predicate to the host, a wait
      # per step); an inactive step is computed and its results dropped, in the same select
      # that keeps the state of a non-finite step.
      return run_step(i, carry, active)

    def body(i, carry):
      active = (i < num_steps) & (carry[2] == 0)  # within num_steps, no non-finite step yet
      return jax.lax.platform_dependent(i, carry, active, cpu=skipping, default=masking)

    zero = jnp.zeros((), jnp.int32)
    # A constant trip count (the capacity K): XLA runs a loop whose trip count it cannot prove
    # by copying its condition to the host after every iteration on GPU.
    state, steps_run, bad, buffer = jax.lax.fori_loop(0, capacity, body,
                                                      (state, zero, zero, buffer))
    return state, ChunkResult(buffer, steps_run, bad)

  return jax.jit(chunk, donate_argnums=0)


def make_eval_step(graphdef: Any, loss_fn: LossFn, builder: Callable):
  """Returns jitted `step(state, images [N,...], labels [N], index [B] int, valid [B] bool) ->
  StepMetrics` over the examples `builder(None, images, labels, index)`
  (`capsjax.data.dataset.ExampleBuilder`) of the stored test split resident on the device (its
  labels were checked when it was loaded); `capsjax.train.evaluate.evaluate_indexed` runs it over
  a test set.

  `graphdef`/`state`: of the model alone (`capsjax.train.model_state.load_for_eval`), or of the
  (model, optimizer) pair that training uses (the optimizer is not touched). Test-time behaviour
  (CapsNet: decoder masked by the predicted class); padded examples (valid = False) do not count.
  """

  def step(state, images, labels, index, valid):
    x, targets = builder(None, images, labels, index)
    model = _model_of(nnx.merge(graphdef, state))
    _, metrics = _objective(loss_fn, model, to_float(x), targets, train=False, valid=valid)
    return metrics

  return jax.jit(step)


def make_outputs_step(graphdef: Any, outputs_fn: Callable[[nnx.Module, jnp.ndarray], Outputs]):
  """Returns jitted `step(state, images [N,H,W,C]) -> Outputs` (the network's `Arch.outputs`:
  scores, capsules, reconstructions; state as for `make_eval_step`). Images: uint8 0..255 or
  float in [0, 1] (`capsjax.nn.inputs.to_float`); another dtype raises ValueError naming it."""

  return jax.jit(lambda state, images: outputs_of(graphdef, outputs_fn, state, images))


def outputs_of(graphdef: Any, outputs_fn: Callable[[nnx.Module, jnp.ndarray], Outputs], state,
               images) -> Outputs:
  """The network's test-time `Outputs` of `images` (what `make_outputs_step` compiles; pure, to
  call inside another compiled function)."""
  return outputs_fn(_model_of(nnx.merge(graphdef, state)), to_float(images))
