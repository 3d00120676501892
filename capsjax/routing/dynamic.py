"""Dynamic routing by agreement (Sabour, Frosst & Hinton 2017, Procedure 1, Eqs. 2-3)."""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from capsjax.core.squash import squash
from capsjax.routing.base import RoutingResult, check_num_iters, check_votes, weighted_sum
from capsjax.routing.registry import register


def _couplings(b: jnp.ndarray, leaky: bool) -> jnp.ndarray:
  """Eq. 3: couplings c_ij = softmax_j(logits b_ij), over the OUTPUT capsules j.

  [N_in, N_out] -> same.
  """
  if not leaky:
    return jax.nn.softmax(b, axis=-1)
  # Official code's leaky routing: an extra zero logit ("orphan" parent) absorbs part of the
  # mass and is dropped afterwards, so couplings of one input may sum to less than 1.
  padded = jnp.concatenate([jnp.zeros_like(b[:, :1]), b], axis=-1)
  return jax.nn.softmax(padded, axis=-1)[:, 1:]


@register("dynamic", paper="Sabour, Frosst & Hinton 2017, Procedure 1 (Eqs. 1-3)")
def dynamic_routing(u_hat: jnp.ndarray, num_iters: int = 3, *, stop_gradient: bool = False,
                    leaky: bool = False, bias: jnp.ndarray | None = None) -> RoutingResult:
  """Procedure 1 for one example.

  Logits b_ij = 0; repeat num_iters times: couplings c = softmax_j(b) (Eq. 3); s_j = sum_i c_ij
  û_j|i (Eq. 2); v_j = squash(s_j) (Eq. 1); b_ij += û_j|i . v_j. Procedure 1 does this update in
  every iteration, the last included; here it is skipped after the last one, our choice with the
  same outputs: v and the returned c are computed before it and nothing reads b afterwards.

  Without bias, leak or stopped gradient (the paper's rule, CapsNet's default) the backward pass
  is written by hand (`jax.custom_vjp`): it keeps each iteration's c_t, s_t and v_t and forms
  the votes' gradient as one sum of outer products, sum_t c_t g_s,t + sum_t g_b,t+1 v_t, where
  autodiff's pieces made XLA:CPU write it in a slow, transposing fusion (measured:
  docs/results.md). Same values; gradients equal to autodiff's to float32 rounding.

  Args:
    u_hat: [N_in, N_out, D_out] prediction vectors ("votes") u_hat_j|i = W_ij u_i.
    num_iters: routing iterations r >= 1.
    stop_gradient: if True, no gradient flows through the agreement u_hat . v of the non-final
      iterations (the logits b become constants); the default lets gradients flow through every
      iteration, as the official code does.
    leaky: if True, use the official code's leaky routing (extra zero logit in the softmax).
    bias: [N_out, D_out] added to s_j before every squash (the official code's DigitCaps bias;
      `CapsNet(variant="official")` learns it); None: the paper's s_j.

  Returns:
    RoutingResult(v [N_out, D_out], c [N_in, N_out]) with the couplings of the last iteration.

  Raises:
    ValueError: u_hat not of rank 3, or num_iters not an integer >= 1.
  """
  check_votes(u_hat, num_iters)
  if not (stop_gradient or leaky) and bias is None:
    v, c = _procedure1(u_hat, num_iters)
    return RoutingResult(v=v, c=c)
  b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  for it in range(num_iters):
    c = _couplings(b, leaky)
    s = weighted_sum(c, u_hat)
    v = squash(s if bias is None else s + bias)
    if it < num_iters - 1:
      agreement = jnp.einsum("ijd,jd->ij", u_hat, v)
      b = b + (jax.lax.stop_gradient(agreement) if stop_gradient else agreement)
  return RoutingResult(v=v, c=c)


def _iterations(u_hat: jnp.ndarray, num_iters: int):
  """Procedure 1's forward pass, keeping each iteration's couplings c_t, s_t and v_t."""
  b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  cs, ss, vs = [], [], []
  for it in range(num_iters):
    c = _couplings(b, leaky=False)
    s = weighted_sum(c, u_hat)
    v = squash(s)
    cs.append(c)
    ss.append(s)
    vs.append(v)
    if it < num_iters - 1:
      b = b + jnp.einsum("ijd,jd->ij", u_hat, v)
  return cs, ss, vs


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _procedure1(u_hat: jnp.ndarray, num_iters: int):
  """(v, c) of Procedure 1 (no bias, leak or stopped gradient) with a hand-written backward
  pass: from autodiff's pieces of the iterations XLA:CPU built the votes' gradient in a slow
  fusion that also transposed it; this one forms it in one sum of outer products
  (docs/results.md, "Where a step's time goes")."""
  cs, _, vs = _iterations(u_hat, num_iters)
  return vs[-1], cs[-1]


def _procedure1_fwd(u_hat, num_iters):
  cs, ss, vs = _iterations(u_hat, num_iters)
  return (vs[-1], cs[-1]), (u_hat, cs, ss, vs)


def _procedure1_bwd(num_iters, residuals, cotangents):
  # Reverse of: c_t = softmax_j(b_t) (Eq. 3); s_t = sum_i c_t u (Eq. 2); v_t = squash(s_t)
  # (Eq. 1); b_{t+1} = b_t + sum_d u v_t. g_b: the gradient reaching b_{t+1} from later on.
  u_hat, cs, ss, vs = residuals
  g_v, g_c = cotangents
  g_b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  terms = []  # (a [N_in, N_out], x [N_out, D]) pairs: du_hat = sum of a[:, :, None] * x[None]
  for t in reversed(range(num_iters)):
    if t == num_iters - 1:
      gv, gc = g_v, g_c
    else:  # v_t reached the loss only through the agreement in b_{t+1}
      gv, gc = jnp.einsum("ij,ijd->jd", g_b, u_hat), jnp.zeros_like(g_b)
      terms.append((g_b, vs[t]))
    gs = jax.vjp(squash, ss[t])[1](gv)[0]
    gc = gc + jnp.einsum("jd,ijd->ij", gs, u_hat)
    terms.append((cs[t], gs))
    c = cs[t]
    g_b = g_b + c * (gc - jnp.sum(c * gc, axis=-1, keepdims=True))  # softmax's VJP; b_t -> b_{t+1}
  a = jnp.stack([a for a, _ in terms], axis=-1)  # [N_in, N_out, T]
  x = jnp.stack([x for _, x in terms], axis=-1)  # [N_out, D, T]
  return (jnp.einsum("ijt,jdt->ijd", a, x),)


_procedure1.defvjp(_procedure1_fwd, _procedure1_bwd)


def check_vote_chunking(routing: str, vote_chunk_size: int | None) -> None:
  """Checks a `vote_chunk_size` setting against the routing rule it is used with.

  Raises:
    ValueError: `vote_chunk_size` is not None and either below 1 or used with a rule other than
      "dynamic" (the only rule with a chunked form).
  """
  if vote_chunk_size is not None and (routing != "dynamic" or vote_chunk_size < 1):
    raise ValueError(f"vote_chunk_size works with routing 'dynamic' only and must be >= 1, got "
                     f"{vote_chunk_size} with routing {routing!r}.")


def dynamic_routing_chunked(u: jnp.ndarray, W: jnp.ndarray, num_iters: int = 3, *,
                            chunk_size: int = 64, stop_gradient: bool = False,
                            leaky: bool = False, dtype: Any = None) -> RoutingResult:
  """`dynamic_routing` of the votes u_hat_j|i = W_ij u_i (Eq. 2), never holding all of them.

  The votes of `chunk_size` input capsules at a time are recomputed from W and u inside every
  routing iteration (a `lax.scan` over chunks, rematerialised in the backward pass), so memory
  holds [chunk_size, N_out, D_out] votes instead of [N_in, N_out, D_out]; under `jax.vmap` over a
  batch that is the difference between [B, chunk, N_out, D] and the full [B, N_in, N_out, D].
  Same results as `dynamic_routing(jnp.einsum("ijdk,ik->ijd", W, u), ...)` up to float rounding.

  Args:
    u: [N_in, D_in] input capsules of one example.
    W: [N_in, N_out, D_out, D_in] transformation matrices (shared across the batch).
    num_iters: as in `dynamic_routing`.
    stop_gradient: as in `dynamic_routing`.
    leaky: as in `dynamic_routing`.
    chunk_size: input capsules per chunk (N_in is zero-padded to a multiple of it; zero inputs
      give zero votes, which add nothing to s_j).
    dtype: the votes' matmul dtype (e.g. bfloat16, as `DigitCaps(dtype=...)` without chunking;
      None: u's); the votes, the routing and v are in u's dtype.

  Returns:
    RoutingResult(v [N_out, D_out], c [N_in, N_out]).

  Raises:
    ValueError: u and W of mismatched shapes (N_in or D_in), chunk_size not an integer >= 1, or
      num_iters not an integer >= 1.
  """
  if jnp.ndim(u) != 2 or jnp.ndim(W) != 4 or W.shape[0] != u.shape[0] or W.shape[3] != u.shape[1]:
    raise ValueError(f"expected u [N_in, D_in] and W [N_in, N_out, D_out, D_in] with matching "
                     f"N_in and D_in, got u {tuple(jnp.shape(u))} and W {tuple(jnp.shape(W))}.")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
  check_num_iters(num_iters)
  n_in, n_out, dim, _ = W.shape
  chunk_size = min(chunk_size, n_in)
  pad = -n_in % chunk_size
  num_chunks = (n_in + pad) // chunk_size
  matmul = dtype or u.dtype
  u_chunks = jnp.pad(u, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, -1).astype(matmul)
  w_chunks = jnp.pad(W, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(
      num_chunks, chunk_size, *W.shape[1:]).astype(matmul)
  b = jnp.zeros((num_chunks, chunk_size, n_out), u.dtype)
  v = jnp.zeros((n_out, dim), u.dtype)
  for it in range(num_iters):

    @jax.checkpoint
    def chunk_step(carry, chunk, first=(it == 0)):
      s, v_prev = carry
      w_k, u_k, b_k = chunk
      u_hat = jnp.einsum("ijdk,ik->ijd", w_k, u_k).astype(u.dtype)
      if not first:  # the agreement update that ends the previous iteration
        agreement = jnp.einsum("ijd,jd->ij", u_hat, v_prev)
        b_k = b_k + (jax.lax.stop_gradient(agreement) if stop_gradient else agreement)
      c_k = _couplings(b_k, leaky)
      return (s + weighted_sum(c_k, u_hat), v_prev), (b_k, c_k)

    (s, _), (b, c) = jax.lax.scan(chunk_step, (jnp.zeros_like(v), v), (w_chunks, u_chunks, b))
    v = squash(s)
  return RoutingResult(v=v, c=c.reshape(-1, n_out)[:n_in])
