"""The routing-rule interface: a pure per-example function returning `RoutingResult`."""

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

class RoutingResult(NamedTuple):
  """What a routing rule returns for one example.

  Attributes:
    v: [N_out, D_out] output capsules (poses).
    c: [N_in, N_out] final coupling coefficients (assignment probabilities for EM).
    a: [N_out] output activations in (0, 1), only for rules whose capsules carry an activation
      separate from the pose (em, inverted_dot_product); None means the activation is |v|.
  """

  v: jnp.ndarray
  c: jnp.ndarray
  a: jnp.ndarray | None = None

class RoutingRule(Protocol):
  """A routing rule: `rule(u_hat [N_in, N_out, D_out], *, num_iters, **options) -> RoutingResult`.

  Rules take ONE example (no batch axis); layers apply `jax.vmap` over the batch. Learnable
  parameters of a rule (e.g. a log prior) arrive as keyword options created by the rule's
  `ParamInit` (see `capsjax.routing.register`); a rule registered with `uses_activations=True`
  also receives `activations` [N_in], the input capsules' activations (their lengths in CapsNet).
  """

  def __call__(self, u_hat: jnp.ndarray, *, num_iters: int, **options: Any) -> RoutingResult:
    ...

class ParamInit(Protocol):
  """`init(key, num_in, num_out, dim) -> {option name: array}`: a rule's learnable parameters."""

  def __call__(self, key: jax.Array, num_in: int, num_out: int, dim: int
               ) -> dict[str, jnp.ndarray]:
    ...

def check_votes(u_hat: jnp.ndarray, num_iters: int) -> None:
  """Checks a rule's inputs: votes û_j|i of ONE example and an iteration count.

  Raises:
    ValueError: u_hat is not of rank 3 ([N_in, N_out, D_out]; a batch needs `jax.vmap`), or
      num_iters is not an integer >= 1.
  """
  if jnp.ndim(u_hat) != 3:
    raise ValueError(
        f"u_hat must be one example of shape [N_in, N_out, D_out] (rank 3), got shape "
        f"{tuple(jnp.shape(u_hat))}; apply jax.vmap for a batch.")
  check_num_iters(num_iters)


def check_num_iters(num_iters: int) -> None:
  """Checks a routing iteration count.

  Raises:
    ValueError: num_iters is not an int >= 1 (a bool is refused).
  """
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}.")

def weighted_sum(c: jnp.ndarray, u_hat: jnp.ndarray) -> jnp.ndarray:
  """Eq. 2's s_j = sum_i c_ij u_hat_j|i: c [N_in, N_out], u_hat [N_in, N_out, D] -> [N_out, D]."""
  return jnp.einsum("ij,ijd->jd", c, u_hat)
