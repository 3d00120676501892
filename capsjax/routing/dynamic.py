"""Dynamic routing by agreement (Sabour, Frosst & Hinton 2017, Procedure 1, Eqs. 2-3)."""

import jax
import jax.numpy as jnp

from capsjax.routing.base import RoutingResult, check_votes
from capsjax.squash import squash


def _couplings(b: jnp.ndarray, leaky: bool) -> jnp.ndarray:
  """Eq. 3: c_ij = softmax_j(b_ij), over the OUTPUT capsules j. [N_in, N_out] -> same."""
  if not leaky:
    return jax.nn.softmax(b, axis=-1)
  # Official code's leaky routing: an extra zero logit ("orphan" parent) absorbs part of the
  # mass and is dropped afterwards, so couplings of one input may sum to less than 1.
  padded = jnp.concatenate([jnp.zeros_like(b[:, :1]), b], axis=-1)
  return jax.nn.softmax(padded, axis=-1)[:, 1:]


def dynamic_routing(u_hat: jnp.ndarray, num_iters: int = 3, *, stop_gradient: bool = False,
                    leaky: bool = False) -> RoutingResult:
  """Procedure 1 for one example.

  b = 0; repeat num_iters times: c = softmax_j(b) (Eq. 3); s_j = sum_i c_ij u_hat_j|i (Eq. 2);
  v_j = squash(s_j) (Eq. 1); b_ij += u_hat_j|i . v_j (skipped after the last iteration).

  Args:
    u_hat: [N_in, N_out, D_out] prediction vectors ("votes") u_hat_j|i = W_ij u_i.
    num_iters: routing iterations r >= 1.
    stop_gradient: if True, no gradient flows through the agreement u_hat . v of the non-final
      iterations (the logits b become constants); the default lets gradients flow through every
      iteration, as the official code does.
    leaky: if True, use the official code's leaky routing (extra zero logit in the softmax).

  Returns:
    RoutingResult(v [N_out, D_out], c [N_in, N_out]) with the couplings of the last iteration.
  """
  check_votes(u_hat, num_iters)
  b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  for it in range(num_iters):
    c = _couplings(b, leaky)
    s = jnp.einsum("ij,ijd->jd", c, u_hat)
    v = squash(s)
    if it < num_iters - 1:
      agreement = jnp.einsum("ijd,jd->ij", u_hat, v)
      b = b + (jax.lax.stop_gradient(agreement) if stop_gradient else agreement)
  return RoutingResult(v=v, c=c)
