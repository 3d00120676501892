"""Training and evaluation through the programs `capsjax train` and `capsjax eval` run (the
loop's K-step chunk, `evaluate.evaluate_indexed`; see real_path.py), the optimizer schedule and Orbax
checkpoints, on a tiny CapsNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

from capsjax import data, routing
from capsjax.data import augment, datasets
from capsjax.data.augment import shift_transform
from capsjax.infra.checkpoint import Checkpointer
from capsjax.routing import registry
from capsjax.train import steps
from capsjax.train.archs import capsnet as capsnet_arch
from capsjax.train.config import TrainConfig
from conftest import tiny_capsnet
from real_path import Trainer, evaluate

LOSS = capsnet_arch.loss_fn(0.0005)


def _state(seed=0):
  model = tiny_capsnet(seed)
  optimizer = nnx.Optimizer(model, steps.make_optimizer(3e-3, 0.96, 2000), wrt=nnx.Param)
  return nnx.split((model, optimizer))


def _split(n=16) -> data.Split:
  """Noisy uint8 images whose class is where a bright bar sits, so they can be learnt."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, (n,), dtype=np.int32)
  images = rng.integers(0, 60, (n, 28, 28, 1), dtype=np.uint8)
  for k, label in enumerate(labels):
    images[k, 2 + 2 * label:4 + 2 * label, 4:24] = 255
  return data.Split(images, labels, 10)


def test_training_lowers_the_loss_on_a_fixed_batch():
  graphdef, state = _state()
  trainer = Trainer(graphdef, LOSS, _split(), 16, capacity=20)  # every step: the whole split
  state, result = trainer(state, 0, 20)
  assert result.steps_run == 20 and result.bad_step == 0
  assert (result.metrics.finite == 1.0).all()
  losses = result.metrics.loss / result.metrics.count
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def test_evaluation_pads_the_last_batch_and_ignores_the_padding():
  graphdef, state = _state()
  split = _split(25)
  whole = evaluate(graphdef, state, LOSS, split, 25)
  padded = evaluate(graphdef, state, LOSS, split, 10)  # batches of 10, 10 and 5 + 5 padding
  assert whole["examples"] == padded["examples"] == 25
  assert padded == pytest.approx(whole, rel=1e-5)  # every example counted once, padding never
  first5 = evaluate(graphdef, state, LOSS, split, 5, indices=range(5))
  first5_of_8 = evaluate(graphdef, state, LOSS, split, 8, indices=range(5))
  assert first5_of_8["examples"] == 5 and first5_of_8 == pytest.approx(first5, rel=1e-5)
  eval_step = steps.make_eval_step(graphdef, LOSS, datasets.gather())
  metrics = eval_step(state, split.images, split.labels, np.arange(8), np.ones(8, bool))
  assert metrics.finite is None  # the finiteness flag is the train step's only


def test_schedule_is_staircase_exponential_decay():
  sched = steps.make_schedule(1e-3, 0.96, 2000)
  np.testing.assert_allclose([sched(0), sched(1999), sched(2000), sched(4000)],
                             [1e-3, 1e-3, 0.96e-3, 0.96**2 * 1e-3], rtol=1e-6)


def _shift_of(shifted: np.ndarray, image: np.ndarray, max_shift: int):
  """The (dy, dx) with |dy|, |dx| <= max_shift for which `shifted` is `image` translated by
  (dy, dx) with zeros shifted in, or None if there is none."""
  h, w = image.shape[:2]
  for dy in range(-max_shift, max_shift + 1):
    for dx in range(-max_shift, max_shift + 1):
      expected = np.zeros_like(image)
      expected[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
          image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
      if np.array_equal(shifted, expected):
        return dy, dx
  return None


def test_random_shift_moves_by_at_most_two_pixels_with_zero_fill():
  # Distinct positive pixels, so every translate differs from every other.
  images = np.random.default_rng(0).uniform(0.1, 1.0, (32, 28, 28, 1)).astype(np.float32)
  out = np.asarray(augment.random_shift_batch(jax.random.key(0), jnp.asarray(images), 2))
  shifts = [_shift_of(o, x, 2) for o, x in zip(out, images)]
  assert None not in shifts, shifts  # each image: a zero-filled translate by <= 2 px
  assert len(set(shifts)) >= 10, shifts  # drawn per image, not once for the batch
  assert (0, 0) in shifts or len(set(shifts)) > 1
  assert any(dy != 0 and dx != 0 for dy, dx in shifts)  # both axes move
  np.testing.assert_array_equal(augment.random_shift_batch(jax.random.key(0), images, 0), images)
  other = np.asarray(augment.random_shift_batch(jax.random.key(1), jnp.asarray(images), 2))
  assert [_shift_of(o, x, 2) for o, x in zip(other, images)] != shifts  # the key decides


def _copy(state):
  return jax.tree.map(jnp.array, state)


def test_training_on_mnist_trains_on_randomly_shifted_images():
  # The loop's MNIST examples with max_shift = 2 are the stored rows moved by
  # random_shift_batch(the step's data key, rows); with max_shift = 0, the rows themselves.
  graphdef, state = _state()
  split = _split(8)
  mnist = datasets.get("mnist")

  def shifted_rows(key, images, labels, index):
    x, y = datasets.gather()(None, images, labels, index)
    return augment.random_shift_batch(key, x, 2), y

  shifting = mnist.builder(TrainConfig(max_shift=2), "train", split)
  (a, result_a), (b, result_b) = [
      Trainer(graphdef, LOSS, split, 8, builder=examples, capacity=2)(_copy(state), 0, 2)
      for examples in (shifting, shifted_rows)]
  # Equal up to float rounding (two compiled programs); Adam moves each weight by ~3e-3.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               nnx.to_pure_dict(a), nnx.to_pure_dict(b))
  np.testing.assert_allclose(result_a.metrics.loss, result_b.metrics.loss, rtol=1e-6)
  index, key = np.arange(8), jax.random.key(5)
  rows = datasets.gather()(None, split.images, split.labels, index)[0]
  assert not np.array_equal(shifting(key, split.images, split.labels, index)[0], rows)
  still = mnist.builder(TrainConfig(max_shift=0), "train", split)
  np.testing.assert_array_equal(still(key, split.images, split.labels, index)[0], rows)


def test_checkpoint_round_trip(tmp_path):
  graphdef, state = _state(seed=0)
  trainer = Trainer(graphdef, LOSS, _split(), 8, builder=datasets.gather(shift_transform(2)),
                    capacity=2)
  state, _ = trainer(state, 0, 2)
  expected = jax.tree.map(np.array, nnx.to_pure_dict(state))
  ckpt = Checkpointer(tmp_path, keep=2)
  ckpt.save(2, state, {"seed": 0, "model": {"routing_iters": 3}})
  ckpt.close()

  _, fresh = _state(seed=1)  # different init: must be overwritten by the restore
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_step() == 2
  restored, meta = ckpt.restore(fresh)
  assert meta["step"] == 2 and meta["model"]["routing_iters"] == 3
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, nnx.to_pure_dict(restored)),
               expected)
  # Resuming from the restore continues exactly like the uninterrupted state.
  a, _ = trainer(jax.tree.map(jnp.array, restored), 2, 1)
  b, _ = trainer(jax.tree.map(jnp.array, state), 2, 1)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(a), nnx.to_pure_dict(b))


def test_checkpoint_keeps_last_n(tmp_path):
  _, state = _state()
  ckpt = Checkpointer(tmp_path, keep=2)
  for s in (1, 2, 3):
    ckpt.save(s, state, {})
  assert ckpt.all_steps() == [2, 3]


def _differs(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_training_is_deterministic_given_seed():
  graphdef, _ = _state()
  # one compilation
  trainer = Trainer(graphdef, LOSS, _split(), 8, builder=datasets.gather(shift_transform(2)),
                    capacity=3)

  def train(seed: int, run_seed: int):
    """Parameters after 3 steps from init seed `seed`, with the batches and step keys of
    `run_seed`."""
    _, state = _state(seed=seed)
    state, _ = trainer.reseeded(run_seed)(state, 0, 3)
    return jax.tree.map(np.array, nnx.to_pure_dict(state))

  first = train(3, 3)
  jax.tree.map(np.testing.assert_array_equal, first, train(3, 3))
  assert _differs(first, train(4, 3))  # another init seed: other parameters
  assert _differs(first, train(3, 4))  # same init, other run seed: other batches and shifts


def test_non_finite_gradient_with_finite_loss_is_flagged(monkeypatch):
  monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))

  @jax.custom_vjp
  def nan_gradient(x):
    return x

  nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.nan),))

  @routing.register("nan_gradient")
  def nan_gradient_routing(u_hat, *, num_iters):
    return routing.uniform_routing(nan_gradient(u_hat), num_iters=num_iters)

  model = tiny_capsnet(routing="nan_gradient")
  graphdef, state = nnx.split((model, nnx.Optimizer(model, steps.make_optimizer(1e-3, 0.96, 10),
                                                    wrt=nnx.Param)))
  _, result = Trainer(graphdef, LOSS, _split(4), 4, capacity=1)(state, 0, 1)
  assert result.bad_step == 1 and result.steps_run == 0  # flagged, not applied
  assert np.isfinite(result.metrics.loss[0]) and result.metrics.finite[0] == 0.0


def test_the_splits_the_programs_read_reject_labels_out_of_range():
  # The loop's and eval's compiled programs cannot raise on device values: their labels come from
  # a `data.Split` (the stored training or test split), checked when it is built.
  images = _split(4).images
  for bad in (np.array([0, 1, 10, 2], np.int32), jnp.array([-1, 0, 1, 2])):
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 9\], got values from -?\d+ "
                       r"to \d+\.$"):
      data.Split(images, bad, 10)


def test_capsnet_under_checkify_reports_labels_out_of_range():
  model = tiny_capsnet()
  images = jnp.zeros((2, 28, 28, 1))

  @jax.jit
  def lengths(images, labels):
    return model(images, labels).lengths

  checked = jax.jit(checkify.checkify(lengths, errors=checkify.user_checks))
  error, _ = checked(images, jnp.array([3, 10]))
  assert error.get() and "labels must lie in [0, 9], got values from 3 to 10." in error.get()
  error, _ = checked(images, jnp.array([3, 9]))
  assert error.get() is None
