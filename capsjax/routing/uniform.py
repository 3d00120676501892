"""No routing: every input sends its vote to every output with the same weight.

Gu & Tresp, "Improving the Robustness of Capsule Networks to Image Affine Transformations"
(CVPR 2020): the routing ablation where c_ij = 1 / N_out (uniform couplings), one
weighted sum (Sabour et al. Eq. 2) and squash (Eq. 1).
"""

import jax.numpy as jnp

from capsjax.core.squash import squash
from capsjax.routing.base import RoutingResult, check_votes, weighted_sum
from capsjax.routing.registry import register


@register("uniform", iterative=False,
          paper="no routing, c = 1/N_out (ablation of Gu & Tresp 2020)")
def uniform_routing(u_hat: jnp.ndarray, *, num_iters: int = 1) -> RoutingResult:
  """v_j = squash(sum_i u_hat_j|i / N_out) for one example.

  Args:
    u_hat: [N_in, N_out, D_out] votes.
    num_iters: accepted for the common interface and ignored (one pass).

  Returns:
    RoutingResult(v [N_out, D_out], c [N_in, N_out] all equal to 1 / N_out).

  Raises:
    ValueError: u_hat not of rank 3, or num_iters not an integer >= 1.
  """
  check_votes(u_hat, num_iters)
  c = jnp.full(u_hat.shape[:2], 1.0 / u_hat.shape[1], u_hat.dtype)
  return RoutingResult(v=squash(weighted_sum(c, u_hat)), c=c)
