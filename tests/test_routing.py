"""Dynamic routing against an independent, loop-based float64 reference of Procedure 1."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from capsjax.routing import RoutingResult, dynamic_routing

EPS = 1e-7


def reference_routing(u_hat, num_iters, leaky=False):
  """Procedure 1 with explicit loops over i, j, d (float64)."""
  u_hat = np.asarray(u_hat, np.float64)
  n_in, n_out, dim = u_hat.shape
  b = np.zeros((n_in, n_out))
  for it in range(num_iters):
    c = np.zeros((n_in, n_out))
    for i in range(n_in):
      logits = [0.0] + list(b[i]) if leaky else list(b[i])
      top = max(logits)
      e = [np.exp(x - top) for x in logits]
      total = sum(e)
      for j in range(n_out):
        c[i, j] = e[j + 1 if leaky else j] / total
    v = np.zeros((n_out, dim))
    for j in range(n_out):
      s = np.zeros(dim)
      for i in range(n_in):
        s += c[i, j] * u_hat[i, j]
      sq = float(np.dot(s, s))
      v[j] = sq / (1 + sq) * s / np.sqrt(sq + EPS)
    if it < num_iters - 1:
      for i in range(n_in):
        for j in range(n_out):
          b[i, j] += float(np.dot(u_hat[i, j], v[j]))
  return v, c


def votes(seed=0, shape=(12, 5, 4), scale=0.5):
  return scale * jax.random.normal(jax.random.key(seed), shape)


class DynamicRoutingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(num_iters=(1, 2, 3, 4), leaky=(False, True))
  def test_matches_reference(self, num_iters, leaky):
    u_hat = votes(num_iters)
    fn = self.variant(lambda u: dynamic_routing(u, num_iters, leaky=leaky))
    result = fn(u_hat)
    self.assertIsInstance(result, RoutingResult)
    chex.assert_shape(result.v, (5, 4))
    chex.assert_shape(result.c, (12, 5))
    v_ref, c_ref = reference_routing(u_hat, num_iters, leaky)
    np.testing.assert_allclose(result.v, v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.c, c_ref, rtol=1e-5, atol=1e-6)

  def test_couplings_sum_to_one_over_outputs(self):
    c = dynamic_routing(votes(1), 3).c
    np.testing.assert_allclose(c.sum(axis=1), 1.0, rtol=1e-6)
    c_leaky = dynamic_routing(votes(1), 3, leaky=True).c
    self.assertTrue(bool(jnp.all(c_leaky.sum(axis=1) < 1.0)))

  def test_first_iteration_is_uniform(self):
    c = dynamic_routing(votes(2), 1).c
    np.testing.assert_allclose(c, 1.0 / 5, rtol=1e-6)

  @parameterized.parameters(False, True)
  def test_vmap_matches_reference_per_example(self, leaky):
    batch = votes(3, (6, 12, 5, 4))
    batched = jax.jit(jax.vmap(lambda u: dynamic_routing(u, 3, leaky=leaky)))(batch)
    for k in range(6):
      v_ref, c_ref = reference_routing(batch[k], 3, leaky)
      np.testing.assert_allclose(batched.v[k], v_ref, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(batched.c[k], c_ref, rtol=1e-5, atol=1e-6)

  def test_stop_gradient_same_value_other_gradient(self):
    u_hat = votes(4)
    loss = lambda u, sg: jnp.sum(dynamic_routing(u, 3, stop_gradient=sg).v ** 2)
    np.testing.assert_allclose(loss(u_hat, True), loss(u_hat, False), rtol=1e-6)
    g_full, g_stop = jax.grad(loss)(u_hat, False), jax.grad(loss)(u_hat, True)
    self.assertTrue(bool(jnp.all(jnp.isfinite(g_full))) and bool(jnp.all(jnp.isfinite(g_stop))))
    self.assertGreater(float(jnp.max(jnp.abs(g_full - g_stop))), 1e-6)
    # With one iteration there is no agreement step, so the option changes nothing.
    np.testing.assert_allclose(jax.grad(lambda u: jnp.sum(dynamic_routing(u, 1).v))(u_hat),
                               jax.grad(lambda u: jnp.sum(dynamic_routing(
                                   u, 1, stop_gradient=True).v))(u_hat), rtol=1e-6)

  def test_zero_votes_finite_gradient(self):
    g = jax.grad(lambda u: jnp.sum(dynamic_routing(u, 3).v))(jnp.zeros((4, 3, 2)))
    self.assertTrue(bool(jnp.all(jnp.isfinite(g))))


@pytest.mark.parametrize("shape", [(4, 3), (2, 4, 3, 2), ()])
def test_wrong_rank_raises(shape):
  with pytest.raises(ValueError, match=r"\[N_in, N_out, D_out\]"):
    dynamic_routing(jnp.zeros(shape), 3)


@pytest.mark.parametrize("iters", [0, -1, 2.5])
def test_bad_num_iters_raises(iters):
  with pytest.raises(ValueError, match="num_iters"):
    dynamic_routing(jnp.zeros((4, 3, 2)), iters)


@pytest.mark.parametrize("iters", [1, 2, 3, 5])
def test_the_hand_written_backward_matches_autodiff_and_the_float64_reference(iters):
  """`dynamic_routing` without bias, leak or stopped gradient has its own VJP (one sum of outer
  products for the votes' gradient): against autodiff of the general path (bias = 0, the same
  forward) and against float64 central differences of the loop reference, through v and c."""
  u = votes(iters, shape=(6, 4, 5))
  w_v = np.asarray(jax.random.normal(jax.random.key(10), (4, 5)))
  w_c = np.asarray(jax.random.normal(jax.random.key(11), (6, 4)))

  def loss(u, bias):
    r = dynamic_routing(u, iters, bias=bias)
    return jnp.sum(w_v * r.v) + jnp.sum(w_c * r.c)

  ours = np.asarray(jax.grad(loss)(u, None))
  autodiff = np.asarray(jax.grad(loss)(u, jnp.zeros((4, 5))))
  np.testing.assert_allclose(ours, autodiff, rtol=1e-5, atol=1e-6)

  def reference_loss(x):
    v, c = reference_routing(x, iters)
    return float(np.sum(w_v * v) + np.sum(w_c * c))

  x0, h = np.asarray(u, np.float64), 1e-6
  numeric = np.zeros_like(x0)
  for index in np.ndindex(x0.shape):
    step = np.zeros_like(x0)
    step[index] = h
    numeric[index] = (reference_loss(x0 + step) - reference_loss(x0 - step)) / (2 * h)
  np.testing.assert_allclose(ours, numeric, rtol=2e-3, atol=2e-5)
