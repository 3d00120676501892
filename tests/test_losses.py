import jax
import jax.numpy as jnp
import numpy as np

from capsjax import losses


def test_margin_loss_hand_computed():
  lengths = jnp.array([[0.95, 0.05, 0.5], [0.2, 0.9, 0.0]])
  onehot = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  # ex 0: present 0.95 >= 0.9 -> 0; absent 0.05 <= 0.1 -> 0; absent 0.5 -> 0.5*(0.4)^2 = 0.08
  # ex 1: present (0.9-0.2)^2 = 0.49; absent 0.9 -> 0.5*0.8^2 = 0.32; absent 0.0 -> 0
  np.testing.assert_allclose(losses.margin_loss(lengths, onehot), [0.08, 0.81], rtol=1e-6)


def test_margin_loss_parameters():
  out = losses.margin_loss(jnp.array([[0.5, 0.5]]), jnp.array([[1.0, 0.0]]), m_plus=0.8,
                           m_minus=0.2, lam=1.0)
  np.testing.assert_allclose(out, [0.09 + 0.09], rtol=1e-6)


def test_reconstruction_loss_is_sum_not_mean():
  images = jnp.zeros((2, 2, 2, 1))
  recon = jnp.array([[[[1.0], [0.0]], [[0.0], [0.5]]], [[[0.1], [0.1]], [[0.1], [0.1]]]])
  np.testing.assert_allclose(losses.reconstruction_loss(recon, images), [1.25, 0.04], rtol=1e-6)


def test_total_loss_weight():
  margin, recon = jnp.array([0.1, 0.3]), jnp.array([100.0, 300.0])
  np.testing.assert_allclose(losses.total_loss(margin, recon), 0.2 + 0.0005 * 200.0, rtol=1e-6)
  assert losses.RECONSTRUCTION_WEIGHT == 0.0005


def test_margin_loss_gradient_finite_at_zero_length():
  g = jax.grad(lambda l: losses.margin_loss(l, jnp.eye(3)).sum())(jnp.zeros((3, 3)))
  assert bool(jnp.all(jnp.isfinite(g)))
