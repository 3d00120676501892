import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from capsjax import safe_length
from capsjax.core.squash import squash


class SquashTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_eq1(self):
    s = jax.random.normal(jax.random.key(0), (5, 7, 16))
    v = self.variant(squash)(s)
    chex.assert_shape(v, (5, 7, 16))
    n = np.linalg.norm(np.asarray(s, np.float64), axis=-1, keepdims=True)
    expected = n**2 / (1 + n**2) * np.asarray(s) / n
    np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)

  def test_length_below_one_and_direction_kept(self):
    s = 10.0 * jax.random.normal(jax.random.key(1), (100, 8))
    v = squash(s)
    lengths = jnp.linalg.norm(v, axis=-1)
    self.assertTrue(bool(jnp.all(lengths < 1.0)))
    cos = jnp.sum(v * s, -1) / (lengths * jnp.linalg.norm(s, axis=-1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)

  def test_unit_vector_gives_half(self):
    np.testing.assert_allclose(jnp.linalg.norm(squash(jnp.array([0.6, 0.8]))), 0.5, rtol=1e-5)

  @parameterized.parameters(0, 1, 2, -1)
  def test_axis(self, axis):
    s = jax.random.normal(jax.random.key(2), (3, 4, 5))  # every axis a different size
    x = np.asarray(s, np.float64)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    np.testing.assert_allclose(squash(s, axis=axis), n**2 / (1 + n**2) * x / n, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(safe_length(s, axis=axis), np.squeeze(n, axis), rtol=1e-5)

  def test_zero_vector_finite_value_and_gradient(self):
    z = jnp.zeros((8,))
    np.testing.assert_array_equal(squash(z), 0.0)
    g = jax.grad(lambda s: jnp.sum(squash(s)))(z)
    self.assertTrue(bool(jnp.all(jnp.isfinite(g))))
    g_len = jax.grad(lambda v: safe_length(v))(z)
    self.assertTrue(bool(jnp.all(jnp.isfinite(g_len))))
    np.testing.assert_allclose(safe_length(jnp.array([3.0, 4.0])), 5.0, rtol=1e-6)
