"""Flax NNX layers of CapsNet: Conv1, PrimaryCaps, DigitCaps (with routing) and the Decoder."""

import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import routing as routing_lib
from capsjax.core.squash import safe_length, squash
from capsjax.nn import conv
from capsjax.routing.base import RoutingResult


class Conv2D(nnx.Module):
  """VALID convolution computed as patches @ kernel (see `capsjax.nn.conv`).

  Input [B, H, W, C_in] -> output [B, OH, OW, C_out]. Parameters: kernel [k, k, C_in, C_out]
  (HWIO, LeCun-normal init, like `nnx.Conv`) and bias [C_out] (none if not `use_bias`).
  `dtype`: the computation's dtype (e.g. bfloat16; None: the input's); parameters stay float32.

  Args:
    in_features: input channels C_in.
    out_features: output channels C_out.
    kernel_size: kernel side k in pixels (k x k).
    stride: step in pixels, the same in both spatial dimensions.
    use_bias: learn a bias [C_out] (initialised to zeros).
    dtype: computation dtype; None: the input's.
    rngs: the kernel's initialisation draws from `rngs.params()`.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int = 1, *,
               use_bias: bool = True, dtype: Any = None, rngs: nnx.Rngs):
    init = jax.nn.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(),
                                 (kernel_size, kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.stride, self.dtype = stride, dtype

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dtype = self.dtype or x.dtype
    bias = 0.0 if self.bias is None else self.bias[...].astype(dtype)
    return conv.conv2d(x.astype(dtype), self.kernel[...].astype(dtype), bias, self.stride)


class PrimaryCaps(nnx.Module):
  """Convolutional capsules: conv (k x k, stride s) to channels*dim maps, reshape, squash.

  The paper's primary capsules (§4, Fig. 1): input [B, H, W, C_in] -> output
  [B, OH*OW*channels, dim] float32 (for MNIST: [B, 1152, 8]), capsule (row * OW + col) *
  channels + type, each squashed (Eq. 1). `official`: the official code's form,
  squash(conv(x) / channels + b) with a conv without bias and b [channels, dim] (its one routing
  iteration over `channels` outputs with one input gives every coupling 1 / channels). `dtype`:
  the convolution's (the squash is float32).

  Args:
    in_features: input channels C_in (Conv1's 256).
    channels: capsule types per position (32).
    dim: capsule dimension (8).
    kernel_size: kernel side in pixels (9).
    stride: step in pixels (2).
    official: the official code's form above, with its learnable b [channels, dim].
    dtype: the convolution's computation dtype; None: the input's.
    rngs: initialisation keys.
  """

  def __init__(self, in_features: int, channels: int, dim: int, kernel_size: int, stride: int,
               *, official: bool = False, dtype: Any = None, rngs: nnx.Rngs):
    self.conv = Conv2D(in_features, channels * dim, kernel_size, stride, use_bias=not official,
                       dtype=dtype, rngs=rngs)
    self.capsule_bias = nnx.Param(jnp.zeros((channels, dim))) if official else None
    self.channels, self.dim = channels, dim

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = self.conv(x).astype(jnp.float32)
    if self.capsule_bias is None:
      return squash(y.reshape(y.shape[0], -1, self.dim))
    y = y.reshape(y.shape[0], -1, self.channels, self.dim) / self.channels + self.capsule_bias[...]
    return squash(y.reshape(y.shape[0], -1, self.dim))


class DigitCaps(nnx.Module):
  """Fully connected capsules with routing (Eq. 2 votes, then the routing rule picked by name).

  Input u [B, N_in, D_in] -> RoutingResult(v [B, N_out, D_out], c [B, N_in, N_out],
  a [B, N_out] or None). W [N_in, N_out, D_out, D_in] holds one D_out x D_in matrix per (input,
  output) capsule pair; a rule's learnable parameters (`capsjax.routing.register(init_params=)`)
  live in `routing_params`. Rules that use activations get the input capsules' lengths. With
  `bias`, a learnable b [N_out, D_out] is passed to the rule as `bias` (added to s_j before the
  squash, as in the official code; `dynamic` accepts it).

  `vote_chunk_size` (dynamic routing only) computes the votes `vote_chunk_size` input capsules at a
  time inside the routing loop (`dynamic_routing_chunked`), so the [B, N_in, N_out, D_out] votes
  tensor is never held whole: much less memory, same results, some extra compute.
  `dtype` (e.g. bfloat16): the votes' matmul runs in it; the routing itself is float32.

  The paper's digit capsules: votes û_j|i = W_ij u_i (Eq. 2), then the rule computes the
  couplings c_ij (dynamic routing: softmax over j of the logits b_ij, Eq. 3) and
  v_j = squash(s_j) (Eq. 1). W is initialised from a normal of stddev 0.01.

  Args:
    num_in: input capsules N_in (1152 for MNIST).
    in_dim: input capsule dimension D_in (8).
    num_out: output capsules N_out (one per class, 10).
    out_dim: output capsule dimension D_out (16).
    routing: a registered rule name (`capsjax.routing.available()`).
    num_iters: routing iterations r >= 1 (ignored by one-pass rules).
    routing_options: keyword options of the rule (`capsjax rules` lists them).
    vote_chunk_size: input capsules per chunk of votes (dynamic routing only); None: all at once.
    bias: learn b [N_out, D_out] added to s_j (the official variant).
    dtype: the votes' matmul dtype; None: the input's.
    rngs: initialisation keys.

  Raises:
    ValueError: an unknown rule, an option the rule does not take (or of the wrong kind), or a
      `vote_chunk_size` below 1 or with a rule other than "dynamic".
  """

  def __init__(self, num_in: int, in_dim: int, num_out: int, out_dim: int, routing: str,
               num_iters: int, routing_options: Mapping[str, Any] | None = None,
               vote_chunk_size: int | None = None, *, bias: bool = False, dtype: Any = None,
               rngs: nnx.Rngs):
    options = dict(routing_options or {})
    routing_lib.check_options(routing, options)
    routing_lib.check_vote_chunking(routing, vote_chunk_size)
    self.W = nnx.Param(0.01 * jax.random.normal(rngs.params(), (num_in, num_out, out_dim, in_dim)))
    self.routing_params = nnx.Dict({
        k: nnx.Param(v) for k, v in
        routing_lib.init_params(routing, rngs.params(), num_in, num_out, out_dim).items()})
    if bias:  # the official variant: s_j + b_j inside the rule (it must accept `bias`)
      self.routing_params["bias"] = nnx.Param(jnp.zeros((num_out, out_dim)))
    self.rule = routing_lib.info(routing)
    self.num_iters = num_iters
    self.options = options
    self.vote_chunk_size = vote_chunk_size
    self.dtype = dtype

  def __call__(self, u: jnp.ndarray) -> RoutingResult:
    W = self.W[...]
    if self.vote_chunk_size is not None:
      chunked = functools.partial(routing_lib.dynamic_routing_chunked, W=W,
                                  num_iters=self.num_iters, chunk_size=self.vote_chunk_size,
                                  dtype=self.dtype, **self.options)
      with jax.named_scope("votes_and_routing"):
        return jax.vmap(chunked)(u)
    params = {k: p[...] for k, p in self.routing_params.items()}
    rule = functools.partial(self.rule.fn, num_iters=self.num_iters, **self.options, **params)
    dtype = self.dtype or u.dtype
    with jax.named_scope("votes"):  # (named scopes name the ops in benchmarks/step_profile.py)
      u_hat = jnp.einsum("ijdk,bik->bijd", W.astype(dtype), u.astype(dtype)  # Eq. 2
                         ).astype(u.dtype)  # u_hat_j|i = W_ij u_i
    with jax.named_scope("routing"):
      if self.rule.uses_activations:
        return jax.vmap(lambda votes, a: rule(votes, activations=a))(u_hat, safe_length(u))
      return jax.vmap(rule)(u_hat)


class Decoder(nnx.Module):
  """MLP reconstructing the image from the masked DigitCaps (§4.1, Fig. 2).

  Input [B, N_out * D_out] -> output [B, H, W, C] in [0, 1] (sigmoid, float32). Hidden layers
  are ReLU. `dtype`: the matmuls' (None: float32).

  Args:
    in_features: N_out * D_out (160 for MNIST).
    hidden: widths of the hidden layers ((512, 1024) in the paper).
    out_shape: (H, W, C) of the reconstruction.
    dtype: the matmuls' computation dtype; None: float32.
    rngs: initialisation keys.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], out_shape: Sequence[int], *,
               dtype: Any = None, rngs: nnx.Rngs):
    sizes = [in_features, *hidden, math.prod(out_shape)]
    self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out_shape = tuple(out_shape)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    x = jax.nn.sigmoid(self.layers[-1](x).astype(jnp.float32))
    return x.reshape(x.shape[0], *self.out_shape)

  def masked(self, v: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """The decoder on class capsules masked to one class each (§4.1: the others zeroed).

    Args:
      v: [B, N_out, D_out] class capsules.
      classes: [B] int, the class whose capsule each example keeps.

    Returns:
      [B, H, W, C] reconstructions in [0, 1], float32.
    """
    with jax.named_scope("decoder"):
      mask = jax.nn.one_hot(classes, v.shape[1], dtype=v.dtype)
      return self((v * mask[..., None]).reshape(v.shape[0], -1))
