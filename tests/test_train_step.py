"""Train/eval steps, optimizer schedule and Orbax checkpoints on a tiny CapsNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

from capsjax import augment, routing, steps
from capsjax.routing import registry
from capsjax.checkpoint import Checkpointer
from capsjax.archs import capsnet as capsnet_arch
from capsjax.augment import shift_transform
from conftest import tiny_capsnet


def _state(seed=0):
  model = tiny_capsnet(seed)
  optimizer = nnx.Optimizer(model, steps.make_optimizer(3e-3, 0.96, 2000), wrt=nnx.Param)
  return nnx.split((model, optimizer))


def _batch(n=16):
  """Noisy uint8 images whose class is where a bright bar sits, so they can be learnt."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, (n,), dtype=np.int32)
  images = rng.integers(0, 60, (n, 28, 28, 1), dtype=np.uint8)
  for k, label in enumerate(labels):
    images[k, 2 + 2 * label:4 + 2 * label, 4:24] = 255
  return images, labels


def test_train_step_lowers_loss_on_fixed_batch():
  graphdef, state = _state()
  step = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(0))
  images, labels = _batch()
  losses = []
  for i in range(20):
    state, m = step(state, images, labels, jax.random.key(i))
    losses.append(float(m.loss) / float(m.count))
    assert float(m.finite) == 1.0
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses


def test_eval_step_ignores_padding():
  graphdef, state = _state()
  ev = steps.make_eval_step(graphdef, capsnet_arch.loss_fn(0.0005))
  images, labels = _batch(8)
  full = ev(state, images, labels, np.ones(8, bool))
  padded_images = np.concatenate([images[:5], np.zeros_like(images[:3])])
  half = ev(state, padded_images, labels, np.arange(8) < 5)
  first5 = ev(state, images[:5], labels[:5], np.ones(5, bool))
  assert int(full.count) == 8 and int(half.count) == 5
  assert full.finite is None  # the finiteness flag is the train step's only
  np.testing.assert_allclose(half.loss, first5.loss, rtol=1e-5)
  np.testing.assert_allclose(half.correct, first5.correct)


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


def test_train_step_trains_on_randomly_shifted_images():
  # The step with max_shift = 2 is the step without shift on random_shift_batch(key, images).
  graphdef, state = _state()
  images, labels = _batch(8)
  key = jax.random.key(5)
  shifting = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(2))
  plain = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(0))
  shifted = augment.random_shift_batch(key, steps.to_float(images), 2)
  a, metrics_a = shifting(_copy(state), images, labels, key)
  b, metrics_b = plain(_copy(state), shifted, labels, key)
  c, metrics_c = plain(_copy(state), steps.to_float(images), labels, key)
  # Equal up to float rounding (two compiled programs); Adam moves each weight by ~3e-3.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               a.to_pure_dict(), b.to_pure_dict())
  np.testing.assert_allclose(metrics_a.loss, metrics_b.loss, rtol=1e-6)
  assert abs(float(metrics_a.loss) - float(metrics_c.loss)) > 1e-3 * float(metrics_c.loss)


def test_checkpoint_round_trip(tmp_path):
  graphdef, state = _state(seed=0)
  step = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(2))
  images, labels = _batch()
  for i in range(2):
    state, _ = step(state, images, labels, jax.random.key(i))
  expected = jax.tree.map(np.array, state.to_pure_dict())
  ckpt = Checkpointer(tmp_path, keep=2)
  ckpt.save(2, state, {"seed": 0, "model": {"routing_iters": 3}})
  ckpt.close()

  _, fresh = _state(seed=1)  # different init: must be overwritten by the restore
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_step() == 2
  restored, meta = ckpt.restore(fresh)
  assert meta["step"] == 2 and meta["model"]["routing_iters"] == 3
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, restored.to_pure_dict()),
               expected)
  # Resuming from the restore continues exactly like the uninterrupted state.
  a, _ = step(jax.tree.map(jnp.array, restored), images, labels, jax.random.key(9))
  b, _ = step(jax.tree.map(jnp.array, state), images, labels, jax.random.key(9))
  jax.tree.map(np.testing.assert_array_equal, a.to_pure_dict(), b.to_pure_dict())


def test_checkpoint_keeps_last_n(tmp_path):
  _, state = _state()
  ckpt = Checkpointer(tmp_path, keep=2)
  for s in (1, 2, 3):
    ckpt.save(s, state, {})
  assert ckpt.all_steps() == [2, 3]


def _differs(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_training_is_deterministic_given_seed():
  images, labels = _batch()
  graphdef, _ = _state()
  # one compilation
  step = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(2))

  def train(seed: int, key_seed: int):
    """Parameters after 3 steps from init seed `seed`, with step keys from `key_seed`."""
    _, state = _state(seed=seed)
    for i in range(3):
      state, _ = step(state, images, labels, jax.random.fold_in(jax.random.key(key_seed), i))
    return jax.tree.map(np.array, state.to_pure_dict())

  first = train(3, 3)
  jax.tree.map(np.testing.assert_array_equal, first, train(3, 3))
  assert _differs(first, train(4, 3))  # another init seed: other parameters
  assert _differs(first, train(3, 4))  # same init, other step keys: other shifts, other result


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
  step = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(0))
  images, labels = _batch(4)
  _, metrics = step(state, images, labels, jax.random.key(0))
  assert np.isfinite(float(metrics.loss)) and float(metrics.finite) == 0.0


def test_jitted_steps_reject_labels_out_of_range():
  graphdef, state = _state()
  images, _ = _batch(4)
  train_step = steps.make_train_step(graphdef, capsnet_arch.loss_fn(0.0005), shift_transform(0))
  eval_step = steps.make_eval_step(graphdef, capsnet_arch.loss_fn(0.0005))
  for bad in (np.array([0, 1, 10, 2], np.int32), jnp.array([-1, 0, 1, 2])):
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 9\], got values from -?\d+ "
                       r"to \d+\.$"):
      train_step(state, images, bad, jax.random.key(0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
      eval_step(state, images, bad, np.ones(4, bool))


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
