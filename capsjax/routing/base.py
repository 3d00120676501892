"""The routing-rule interface: a pure per-example function returning `RoutingResult`."""

from typing import NamedTuple, Protocol

import jax.numpy as jnp


class RoutingResult(NamedTuple):
  """What a routing rule returns for one example.

  Attributes:
    v: [N_out, D_out] output capsules.
    c: [N_in, N_out] final coupling coefficients.
  """

  v: jnp.ndarray
  c: jnp.ndarray


class RoutingRule(Protocol):
  """A routing rule: `rule(u_hat [N_in, N_out, D_out], *, num_iters, **options) -> RoutingResult`.

  Rules take ONE example (no batch axis); layers apply `jax.vmap` over the batch.
  """

  def __call__(self, u_hat: jnp.ndarray, *, num_iters: int, **options) -> RoutingResult:
    ...


def check_votes(u_hat: jnp.ndarray, num_iters: int) -> None:
  """Raises ValueError unless u_hat is [N_in, N_out, D_out] and num_iters >= 1."""
  if jnp.ndim(u_hat) != 3:
    raise ValueError(
        f"u_hat must be one example of shape [N_in, N_out, D_out] (rank 3), got shape "
        f"{tuple(jnp.shape(u_hat))}; apply jax.vmap for a batch.")
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}.")
