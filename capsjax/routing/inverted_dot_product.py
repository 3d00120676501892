"""Inverted dot-product attention routing (Tsai, Srivastava, Goh & Salakhutdinov, ICLR 2020).

Procedure 1 of the paper: parent poses start at zero, so the first iteration's couplings are
uniform; each iteration computes the agreement a_ij = p_j . u_hat_j|i (Eq. 2), couplings
r_ij = softmax over the PARENTS j of a_ij (Eq. 3; the "inverted" attention: parents compete for
each child's vote), and poses p_j = LayerNorm(sum_i r_ij u_hat_j|i) (Procedure 1, lines 5-6;
LayerNorm here without a learnable affine).

Tsai et al. read the class out of the final poses with a linear classifier. CapsNet scores a class
by its capsule's activation, so here every class capsule has its own linear readout,
a_j = sigmoid(w_j . p_j + b_j) (learnable `score_weight` [N_out, D], `score_bias` [N_out]); the
layer-normalised pose itself has the same length for every input and cannot be the score.
"""

import jax
import jax.numpy as jnp

from capsjax.routing.base import RoutingResult, check_votes, weighted_sum
from capsjax.routing.registry import register

LAYER_NORM_EPS = 1e-5


def layer_norm(x: jnp.ndarray, eps: float = LAYER_NORM_EPS) -> jnp.ndarray:
  """Normalises [..., D] to zero mean and unit variance over the last axis (no affine)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _readout(key: jax.Array, num_in: int, num_out: int, dim: int) -> dict[str, jnp.ndarray]:
  del num_in
  return {"score_weight": jax.random.normal(key, (num_out, dim)) / jnp.sqrt(dim),
          "score_bias": jnp.zeros((num_out,))}


@register("inverted_dot_product", init_params=_readout,
          paper="Tsai, Srivastava, Goh & Salakhutdinov, ICLR 2020, Procedure 1")
def inverted_dot_product_routing(u_hat: jnp.ndarray, *, num_iters: int = 3,
                                 score_weight: jnp.ndarray | None = None,
                                 score_bias: jnp.ndarray | None = None) -> RoutingResult:
  """Inverted dot-product attention routing for one example.

  Args:
    u_hat: [N_in, N_out, D_out] votes.
    num_iters: routing iterations >= 1 (the first one has uniform couplings).
    score_weight: [N_out, D_out] per-class readout weights (learnable; None: no activations).
    score_bias: [N_out] readout biases (learnable; None: zeros).

  Returns:
    RoutingResult(v [N_out, D_out] layer-normalised poses, c [N_in, N_out] last couplings,
      a [N_out] = sigmoid(w_j . v_j + b_j), or None without `score_weight`).

  Raises:
    ValueError: u_hat not of rank 3, num_iters < 1, or score_weight not of shape [N_out, D_out].
  """
  check_votes(u_hat, num_iters)
  n_in, n_out, dim = u_hat.shape
  p = jnp.zeros((n_out, dim), u_hat.dtype)
  for _ in range(num_iters):
    c = jax.nn.softmax(jnp.einsum("ijd,jd->ij", u_hat, p), axis=-1)
    p = layer_norm(weighted_sum(c, u_hat))
  a = None
  if score_weight is not None:
    if jnp.shape(score_weight) != (n_out, dim):
      raise ValueError(f"score_weight must have shape [N_out, D_out] = [{n_out}, {dim}], got "
                       f"{tuple(jnp.shape(score_weight))}.")
    bias = jnp.zeros((n_out,), u_hat.dtype) if score_bias is None else score_bias
    a = jax.nn.sigmoid(jnp.sum(score_weight * p, axis=-1) + bias)
  return RoutingResult(v=p, c=c, a=a)
