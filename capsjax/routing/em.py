"""EM routing (Hinton, Sabour & Frosst, "Matrix capsules with EM routing", ICLR 2018), on votes.

Procedure 1 of the paper, with each output capsule a Gaussian over its D-dimensional votes
(diagonal covariance), for one example:

  R_ij = 1 / N_out
  repeat num_iters times:
    M-step: R_ij <- R_ij a_i;  mu_j = sum_i R_ij V_ij / sum_i R_ij;
            sigma_j^2 = sum_i R_ij (V_ij - mu_j)^2 / sum_i R_ij  (+ a floor);
            cost_j = sum_h (beta_u + log sigma_j^h) sum_i R_ij;
            a_j = logistic(lambda (beta_a - cost_j))
    E-step (skipped after the last M-step):
            R_ij = softmax_j(log a_j + log N(V_ij; mu_j, sigma_j^2))   (in the log domain)

Known pitfalls (Gritzman, "Avoiding Implementation Pitfalls of Matrix Capsule Networks", 2019)
handled here: the variance has a floor (`var_floor`) so log sigma and the E-step stay finite when
one input owns a parent; the E-step works with log-probabilities and a log-softmax instead of
products of densities, which underflow in D dimensions; the raw cost grows with N_in (through
sum_i R_ij), which saturates the logistic, so sum_i R_ij is taken relative to its mean over the
outputs; the inverse temperature lambda rises over the iterations,
lambda_t = final_lambda (1 - 0.95^(t+1)) / (1 - 0.95^T), reaching `final_lambda` at the last one.

One change of ours: with the raw sigma a class can lower its cost for EVERY input by shrinking
its transformation matrices, and on MNIST one class then took all predictions (train accuracy at
chance). With `scale_free_cost` (default) the cost uses sigma relative to the votes' root mean
square, log sigma - log sqrt(sigma^2 + mu^2), which only agreement can lower (measured figures:
docs/results.md). The E-step is unchanged.

beta_u and beta_a are learnable, one per output capsule.
"""

import math

import jax
import jax.numpy as jnp

from capsjax.routing.base import RoutingResult, check_votes, weighted_sum
from capsjax.routing.registry import register


def _betas(key: jax.Array, num_in: int, num_out: int, dim: int) -> dict[str, jnp.ndarray]:
  del key, num_in, dim
  return {"beta_u": jnp.zeros((num_out,)), "beta_a": jnp.zeros((num_out,))}


def inverse_temperatures(num_iters: int, final_lambda: float) -> list[float]:
  """The inverse temperatures lambda_t for t = 0..num_iters-1.

  lambda_t = final_lambda (1 - 0.95^(t+1)) / (1 - 0.95^num_iters): rising, `final_lambda` at
  the last iteration.
  """
  top = 1.0 - 0.95 ** num_iters
  return [final_lambda * (1.0 - 0.95 ** (t + 1)) / top for t in range(num_iters)]


@register("em", init_params=_betas, uses_activations=True,
          paper="Hinton, Sabour & Frosst, ICLR 2018, Procedure 1")
def em_routing(u_hat: jnp.ndarray, *, num_iters: int = 3, activations: jnp.ndarray | None = None,
               beta_u: jnp.ndarray | None = None, beta_a: jnp.ndarray | None = None,
               final_lambda: float = 0.5, var_floor: float = 1e-8,
               scale_free_cost: bool = True) -> RoutingResult:
  """EM routing for one example; carries activations.

  Args:
    u_hat: [N_in, N_out, D_out] votes V_ij (û_j|i).
    num_iters: EM iterations >= 1 (M-step every iteration, E-step on all but the last).
    activations: [N_in] input activations a_i in [0, 1] (CapsNet passes the primary capsules'
      lengths); None means all ones.
    beta_u: [N_out] learnable cost offset, added per pose dimension (None: zeros).
    beta_a: [N_out] learnable activation offset, the cost subtracted from it (None: zeros).
    final_lambda: inverse temperature of the last iteration.
    var_floor: added to every variance.
    scale_free_cost: use sigma relative to the votes' RMS in the cost (see the module docstring).

  Returns:
    RoutingResult(v [N_out, D_out] = mu (the poses), c [N_in, N_out] = R of the last M-step,
      a [N_out] output activations in (0, 1)).

  Raises:
    ValueError: u_hat not of rank 3, num_iters < 1, or activations not of shape [N_in].
  """
  check_votes(u_hat, num_iters)
  n_in, n_out, dim = u_hat.shape
  if activations is None:
    activations = jnp.ones((n_in,), u_hat.dtype)
  elif jnp.shape(activations) != (n_in,):
    raise ValueError(f"activations must have shape [N_in] = [{n_in}], got "
                     f"{tuple(jnp.shape(activations))}.")
  beta_u = jnp.zeros((n_out,), u_hat.dtype) if beta_u is None else beta_u
  beta_a = jnp.zeros((n_out,), u_hat.dtype) if beta_a is None else beta_a
  r = jnp.full((n_in, n_out), 1.0 / n_out, u_hat.dtype)
  for t, lam in enumerate(inverse_temperatures(num_iters, final_lambda)):
    # M-step.
    ra = r * activations[:, None]
    r_sum = jnp.sum(ra, axis=0) + 1e-12  # [N_out]
    weights = ra / r_sum
    mu = weighted_sum(weights, u_hat)  # [N_out, D]
    var = weighted_sum(weights, jnp.square(u_hat - mu)) + var_floor
    log_sigma = 0.5 * jnp.log(var)
    if scale_free_cost:  # sigma relative to the votes' RMS: shrinking W_j cannot lower the cost
      log_sigma = log_sigma - 0.5 * jnp.log(var + jnp.square(mu))
    # sum_i R_ij relative to its mean over outputs, so the cost does not grow with N_in.
    cost = jnp.sum(beta_u[:, None] + log_sigma, axis=-1) * r_sum / jnp.mean(r_sum)  # [N_out]
    logit = lam * (beta_a - cost)
    if t == num_iters - 1:
      break
    # E-step, log domain.
    log_p = -0.5 * jnp.sum(jnp.square(u_hat - mu) / var + jnp.log(2 * math.pi * var), axis=-1)
    r = jax.nn.softmax(jax.nn.log_sigmoid(logit) + log_p, axis=-1)
  return RoutingResult(v=mu, c=r, a=jax.nn.sigmoid(logit))
