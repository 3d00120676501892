"""Capsule non-linearities (Eq. 1 of Sabour et al. 2017; Efficient-CapsNet's exponential squash)
and a capsule length with a finite gradient at zero."""

import jax.numpy as jnp

DEFAULT_EPS = 1e-7


def squash(s: jnp.ndarray, axis: int = -1, eps: float = DEFAULT_EPS) -> jnp.ndarray:
  """Eq. 1: v = |s|^2 / (1 + |s|^2) * s / |s|.

  The epsilon sits inside the square root (s / sqrt(|s|^2 + eps)), so both the value and the
  gradient are finite at s = 0; an epsilon added after the norm still gives a NaN gradient there.

  Args:
    s: [..., D] capsule input (any shape; `axis` is the capsule dimension).
    axis: the capsule dimension.
    eps: small positive constant inside the square root.

  Returns:
    v with the same shape as s and length |v| < 1.
  """
  sq = jnp.sum(jnp.square(s), axis=axis, keepdims=True)
  return (sq / (1.0 + sq)) * s / jnp.sqrt(sq + eps)


def safe_length(v: jnp.ndarray, axis: int = -1, eps: float = DEFAULT_EPS) -> jnp.ndarray:
  """|v| = sqrt(|v|^2 + eps): a capsule length with a finite gradient at v = 0.

  Used as the class scores |v_k| of the digit capsules (and in the margin loss, Eq. 4).

  Args:
    v: [..., D] capsules.
    axis: the capsule dimension.
    eps: small positive constant inside the square root.

  Returns:
    [...] lengths (the `axis` dimension removed), >= sqrt(eps).
  """
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axis) + eps)


def squash_exp(s: jnp.ndarray, eps: float = DEFAULT_EPS) -> jnp.ndarray:
  """Efficient-CapsNet's squash (Mazzia, Salvetti & Chiaberge 2021): v = (1 - e^-|s|) s / |s|.

  |v| < 1, as for Eq. 1, but it saturates exponentially instead of as |s|^2 / (1 + |s|^2).

  The official code (EscVM/Efficient-CapsNet, utils/layers.py, `Squash`) computes
  (1 - 1 / (e^|s| + 1e-20)) s / (|s| + 1e-20); here |s| = sqrt(|s|^2 + eps) (`safe_length`), so
  the gradient at s = 0 is finite.

  Args:
    s: [..., D] capsule input; the last axis is the capsule dimension.
    eps: small positive constant inside the square root.

  Returns:
    v with the same shape as s.
  """
  norm = safe_length(s, eps=eps)[..., None]
  return -jnp.expm1(-norm) * s / norm
