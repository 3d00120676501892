"""Train/eval steps, optimizer schedule and Orbax checkpoints on a tiny CapsNet."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from capsjax import augment, steps
from capsjax.checkpoint import Checkpointer
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
  step = steps.make_train_step(graphdef, max_shift=0, recon_weight=0.0005)
  images, labels = _batch()
  losses = []
  for i in range(20):
    state, m = step(state, images, labels, jax.random.key(i))
    losses.append(float(m.loss) / float(m.count))
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses


def test_eval_step_ignores_padding():
  graphdef, state = _state()
  ev = steps.make_eval_step(graphdef, recon_weight=0.0005)
  images, labels = _batch(8)
  full = ev(state, images, labels, np.ones(8, bool))
  padded_images = np.concatenate([images[:5], np.zeros_like(images[:3])])
  half = ev(state, padded_images, labels, np.arange(8) < 5)
  first5 = ev(state, images[:5], labels[:5], np.ones(5, bool))
  assert int(full.count) == 8 and int(half.count) == 5
  np.testing.assert_allclose(half.loss, first5.loss, rtol=1e-5)
  np.testing.assert_allclose(half.correct, first5.correct)


def test_schedule_is_staircase_exponential_decay():
  sched = steps.make_schedule(1e-3, 0.96, 2000)
  np.testing.assert_allclose([sched(0), sched(1999), sched(2000), sched(4000)],
                             [1e-3, 1e-3, 0.96e-3, 0.96**2 * 1e-3], rtol=1e-6)


def test_random_shift_moves_by_at_most_two_pixels_with_zero_fill():
  image = jnp.zeros((28, 28, 1)).at[10:18, 10:18].set(1.0)
  seen = set()
  for i in range(60):
    out = augment.random_shift(jax.random.key(i), image, 2)
    ys, xs = np.nonzero(np.asarray(out[..., 0]))
    dy, dx = ys.min() - 10, xs.min() - 10
    assert abs(dy) <= 2 and abs(dx) <= 2 and out.sum() == image.sum()
    seen.add((int(dy), int(dx)))
  assert len(seen) > 10
  border = augment.random_shift(jax.random.key(0), jnp.ones((28, 28, 1)), 2)
  assert float(border.sum()) < 28 * 28  # vacated pixels are zero
  batch = augment.random_shift_batch(jax.random.key(0), jnp.ones((4, 28, 28, 1)), 2)
  assert batch.shape == (4, 28, 28, 1)


def test_checkpoint_round_trip(tmp_path):
  graphdef, state = _state(seed=0)
  step = steps.make_train_step(graphdef, max_shift=2, recon_weight=0.0005)
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


def test_training_is_deterministic_given_seed():
  images, labels = _batch()
  finals = []
  for _ in range(2):
    graphdef, state = _state(seed=3)
    step = steps.make_train_step(graphdef, max_shift=2, recon_weight=0.0005)
    for i in range(3):
      state, _ = step(state, images, labels, jax.random.fold_in(jax.random.key(3), i))
    finals.append(jax.tree.map(np.array, state.to_pure_dict()))
  jax.tree.map(np.testing.assert_array_equal, *finals)
