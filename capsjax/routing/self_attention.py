"""Self-attention routing of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge, Sci. Rep. 2021).

One non-iterative pass (paper Sec. "Self-attention routing"): for every output capsule j the
self-attention matrix A_j = U_j U_j^T / sqrt(D) of its votes U_j [N_in, D] is summed over its
columns, so sum_k A_j[i, k] = u_hat_j|i . (sum_k u_hat_j|k) / sqrt(D); couplings are the softmax of
that over the OUTPUT capsules; s_j = sum_i u_hat_j|i (c_ij + B_ij) with a learnable log prior
B [N_in, N_out] (zeros at init); v_j = squash_exp(s_j), the paper's squash (1 - e^-|s|) s / |s|.
"""

import jax
import jax.numpy as jnp

from capsjax.core.squash import squash_exp
from capsjax.routing.base import RoutingResult, check_votes, weighted_sum
from capsjax.routing.registry import register


def _log_prior(key: jax.Array, num_in: int, num_out: int, dim: int) -> dict[str, jnp.ndarray]:
  del key, dim
  return {"log_prior": jnp.zeros((num_in, num_out))}


@register("self_attention", init_params=_log_prior, iterative=False,
          paper="Efficient-CapsNet, Mazzia, Salvetti & Chiaberge 2021")
def self_attention_routing(u_hat: jnp.ndarray, *, num_iters: int = 1,
                           log_prior: jnp.ndarray | None = None) -> RoutingResult:
  """Efficient-CapsNet self-attention routing for one example.

  Args:
    u_hat: [N_in, N_out, D_out] votes.
    num_iters: accepted for the common interface and ignored (one pass).
    log_prior: [N_in, N_out] learnable log prior B (a CapsNet layer creates it as a parameter);
      None means zeros.

  Returns:
    RoutingResult(v [N_out, D_out], c [N_in, N_out] softmax over outputs, without the prior).

  Raises:
    ValueError: u_hat not of rank 3, num_iters < 1, or log_prior not of shape [N_in, N_out].
  """
  check_votes(u_hat, num_iters)
  n_in, n_out, dim = u_hat.shape
  if log_prior is None:
    log_prior = jnp.zeros((n_in, n_out), u_hat.dtype)
  elif jnp.shape(log_prior) != (n_in, n_out):
    raise ValueError(f"log_prior must have shape [N_in, N_out] = [{n_in}, {n_out}], got "
                     f"{tuple(jnp.shape(log_prior))}.")
  # sum_k A_j[i, k] without forming the [N_in, N_in] matrices: u_hat_j|i . sum_k u_hat_j|k.
  logits = jnp.einsum("ijd,jd->ij", u_hat, jnp.sum(u_hat, axis=0)) / jnp.sqrt(dim)
  c = jax.nn.softmax(logits, axis=-1)
  return RoutingResult(v=squash_exp(weighted_sum(c + log_prior, u_hat)), c=c)
