"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge, Scientific Reports 11, 14634, 2021) as a Flax
NNX module: the MNIST network of the official code (EscVM/Efficient-CapsNet,
`models/efficient_capsnet_graph_mnist.py` and `utils/layers.py`).

| layer | official code | MNIST output |
|---|---|---|
| 4 convs | 5x5/32, 3x3/64, 3x3/64, 3x3/128 stride 2; VALID, ReLU, then batch norm | 9x9x128 |
| PrimaryCaps | depthwise 9x9 conv (a filter per channel, bias), reshaped, squash_exp | 16 of 8-D |
| FCCaps | votes û_j|i = W_ij u_i, self-attention routing, squash_exp | 10 of 16-D |
| Generator | FC 512 ReLU, FC 1024 ReLU, FC 784 sigmoid, masked capsules in | 28x28x1 |
"""

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax.core.squash import safe_length, squash_exp
from capsjax.nn import conv
from capsjax.nn.inputs import check_network_sizes, network_images
from capsjax.nn.layers import Conv2D, Decoder, DigitCaps

# The official network's convolutions: (output channels, kernel side, stride), all VALID + ReLU.
CONVS = ((32, 5, 1), (64, 3, 1), (64, 3, 1), (128, 3, 2))
# Keras' BatchNormalization defaults, which the official code keeps.
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3
# Keras' he_normal and glorot_normal: truncated normals of the named fan (TF2 `VarianceScaling`,
# the same definition as `jax.nn.initializers`).
_HE_NORMAL = jax.nn.initializers.he_normal()
_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()


class EfficientOutput(NamedTuple):
  """Efficient-CapsNet outputs (the fields of `capsjax.nn.CapsNetOutput`).

  Attributes:
    lengths: [B, classes] class scores |v_k| (float32).
    v: [B, classes, digit_dim] digit capsules.
    reconstructions: [B, H, W, C] in [0, 1], or None for a network built without the decoder.
    couplings: [B, num_primary, classes] the routing rule's couplings c_ij.
  """

  lengths: jnp.ndarray
  v: jnp.ndarray
  reconstructions: jnp.ndarray | None
  couplings: jnp.ndarray | None = None


class DepthwiseConv(nnx.Module):
  """A VALID depthwise convolution: one k x k filter per channel, plus a bias per channel.

  [B, H, W, C] -> [B, OH, OW, C]. Kernel [k, k, 1, C] with Keras' default glorot_uniform
  initialisation (fan in k*k, fan out k*k*C), as the official `PrimaryCaps` builds it
  (`Conv2D(F, K, groups=F)`); bias zeros. `dtype`: the computation's (parameters stay float32).
  """

  def __init__(self, channels: int, kernel_size: int, stride: int = 1, *, dtype: Any = None,
               rngs: nnx.Rngs):
    init = jax.nn.initializers.glorot_uniform()
    self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, 1, channels)))
    self.bias = nnx.Param(jnp.zeros((channels,)))
    self.stride, self.dtype = stride, dtype

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    dtype = self.dtype or x.dtype
    k = self.kernel[...].astype(dtype)
    if x.shape[1:3] == k.shape[:2]:  # one output position (MNIST: 9x9 in, 9x9 kernel): a dot
      return jnp.einsum("bhwc,hwc->bc", x.astype(dtype), k[:, :, 0])[:, None, None] + \
          self.bias[...].astype(dtype)
    y = jax.lax.conv_general_dilated(x.astype(dtype), k, (self.stride, self.stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x.shape[-1])
    return y + self.bias[...].astype(dtype)


class EfficientCapsNet(nnx.Module):
  """Convolutions with batch norm -> depthwise PrimaryCaps -> FCCaps (routing) -> masked decoder.

  The defaults build the official MNIST network: 161,824 parameters without the decoder (the
  paper's and the official code's count: convolutions 130,112, batch-norm scales and offsets 576,
  depthwise PrimaryCaps 10,496, W 20,480, the routing's log prior 160) and 1,573,168 with it; the
  batch norms' running means and variances (576 numbers) are `nnx.BatchStat` state, not
  parameters. `model(images [B,H,W,C], labels [B] or None, *, train=False) -> EfficientOutput`:
  with labels the decoder sees the true class's capsule, without it the longest one (§ "Methods"
  of the paper, as in Sabour et al. 2017). `train=True` normalises by the batch's statistics and
  updates the running ones (momentum 0.99, epsilon 1e-3: Keras' defaults, which the official
  code keeps); `train=False` uses the running statistics, so an example's output does not depend
  on the rest of its batch. Images: uint8 0..255 or float in [0, 1] (`capsjax.nn.inputs`; the
  official code divides by 256, not 255).

  Where the official code and the paper differ, this follows the code: the primary capsules are
  squashed with the paper's exponential squash (`capsjax.core.squash.squash_exp`), the routing
  (`self_attention`, the default rule) adds its log prior to the couplings after the softmax,
  and the initialisers are Keras' (he_normal for the convolutions, W and the decoder's hidden
  layers, glorot_normal for its output layer, glorot_uniform for the depthwise filter). Any
  other registered rule may replace self-attention (`routing="dynamic"`, `routing_iters=3`).

  Args:
    input_shape: (H, W, C) of the images, in pixels and channels.
    num_classes: K >= 2 digit capsules.
    conv_channels: output channels of the four convolutions.
    primary_capsules: N primary capsules; the depthwise output (OH*OW*channels values) must
      split into N capsules of `primary_dim`.
    primary_dim: primary capsule dimension (8).
    primary_kernel: the depthwise convolution's kernel side (9: the last feature map's size).
    digit_dim: digit capsule dimension (16).
    routing: a registered rule (`capsjax.routing.available()`; "self_attention").
    routing_iters: iterations of an iterative rule (ignored by self_attention's one pass).
    routing_options: keyword options of the rule.
    decoder_hidden: the decoder's hidden widths ((512, 1024)).
    reconstruction: build the decoder (False: no reconstructions; what the shipped pretrained
      model is, `capsjax.api.load_pretrained`).
    dtype: computation dtype of the convolutions and matmuls (None: float32; bfloat16: mixed
      precision as for `CapsNet`); batch norm, routing and squash stay float32.
    rngs: initialisation keys.

  Raises:
    ValueError: an input_shape that is not three positive sizes or too small for the four
      convolutions and the depthwise kernel (the smallest that works is named), num_classes < 2,
      routing_iters < 1, a depthwise output that does not split into `primary_capsules`
      capsules of `primary_dim`, or a routing rule or option `DigitCaps` refuses.
  """

  def __init__(self, *, input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
               conv_channels: Sequence[int] = tuple(c for c, _, _ in CONVS),
               primary_capsules: int = 16, primary_dim: int = 8, primary_kernel: int = 9,
               digit_dim: int = 16, routing: str = "self_attention", routing_iters: int = 1,
               routing_options: Mapping[str, Any] | None = None,
               decoder_hidden: Sequence[int] = (512, 1024), reconstruction: bool = True,
               dtype: Any = None, rngs: nnx.Rngs):
    check_network_sizes(input_shape, num_classes)
    if routing_iters < 1:
      raise ValueError(f"routing_iters must be >= 1, got {routing_iters}.")
    if len(conv_channels) != len(CONVS):
      raise ValueError(f"conv_channels must give {len(CONVS)} channel counts, got "
                       f"{tuple(conv_channels)!r}.")
    h, w, c = (int(s) for s in input_shape)
    oh, ow = _feature_size(h, primary_kernel), _feature_size(w, primary_kernel)
    if min(oh, ow) < 1:
      side = _smallest_side(primary_kernel)
      raise ValueError(f"input_shape {(h, w, c)} is too small for Efficient-CapsNet's "
                       f"convolutions and its {primary_kernel}x{primary_kernel} depthwise kernel;"
                       f" the smallest that works is {side}x{side}.")
    values = oh * ow * conv_channels[-1]
    if values != primary_capsules * primary_dim:
      raise ValueError(f"the depthwise PrimaryCaps gives {oh}x{ow}x{conv_channels[-1]} = "
                       f"{values} values, which do not make {primary_capsules} capsules of "
                       f"{primary_dim} (= {primary_capsules * primary_dim}).")
    channels = [c, *conv_channels]
    self.convs = nnx.List([Conv2D(a, b, k, s, dtype=dtype, rngs=rngs)
                           for a, b, (_, k, s) in zip(channels[:-1], channels[1:], CONVS)])
    self.norms = nnx.List([nnx.BatchNorm(b, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
                           for b in conv_channels])
    self.primary = DepthwiseConv(conv_channels[-1], primary_kernel, dtype=dtype, rngs=rngs)
    self.digits = DigitCaps(primary_capsules, primary_dim, num_classes, digit_dim, routing,
                            routing_iters, routing_options, dtype=dtype, rngs=rngs)
    self.decoder = (Decoder(num_classes * digit_dim, decoder_hidden, (h, w, c), dtype=dtype,
                            rngs=rngs) if reconstruction else None)
    self.input_shape = (h, w, c)
    self.num_classes = num_classes
    self.num_primary = primary_capsules
    self.primary_dim = primary_dim
    # Primary capsule i = (row * OW + col) * types + type, as for CapsNet (`capsjax.viz`).
    self.primary_grid = (oh, ow, primary_capsules // (oh * ow)) \
        if primary_capsules % (oh * ow) == 0 else None
    self._initialise_as_official(rngs)

  def _initialise_as_official(self, rngs: nnx.Rngs) -> None:
    """Keras' initialisers of the official code (`kernel_initializer='he_normal'` on the
    convolutions, FCCaps' W and the decoder's hidden layers, 'glorot_normal' on its output
    layer); biases and the routing's log prior stay zeros."""
    for layer in self.convs:
      layer.kernel[...] = _HE_NORMAL(rngs.params(), layer.kernel.shape)
    # Keras reads W [N_out, N_in, D_in, D_out] with fan_in = N_out * N_in * D_in.
    n_in, n_out, d_out, d_in = self.digits.W.shape
    w = _HE_NORMAL(rngs.params(), (n_out * n_in * d_in, d_out))
    self.digits.W[...] = w.reshape(n_out, n_in, d_in, d_out).transpose(1, 0, 3, 2)
    if self.decoder is not None:
      layers = self.decoder.layers
      for i, layer in enumerate(layers):
        init = _GLOROT_NORMAL if i == len(layers) - 1 else _HE_NORMAL
        layer.kernel[...] = init(rngs.params(), layer.kernel.shape)

  def features(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """The four convolutions, each ReLU then batch norm: float [B, H, W, C] -> [B, 9, 9, 128]."""
    for layer, norm in zip(self.convs, self.norms):
      x = norm(jax.nn.relu(layer(x)).astype(jnp.float32), use_running_average=not train)
    return x

  def __call__(self, images: jnp.ndarray, labels: jnp.ndarray | None = None, *,
               train: bool = False) -> EfficientOutput:
    x = network_images(images, self.input_shape)
    if labels is not None and tuple(jnp.shape(labels)) != (x.shape[0],):
      raise ValueError(f"labels must have shape [{x.shape[0]}] (one integer class per image), "
                       f"got {tuple(jnp.shape(labels))}.")
    with jax.named_scope("conv1"):
      x = self.features(x, train)
    with jax.named_scope("primary_caps"):
      y = self.primary(x).astype(jnp.float32)
      u = squash_exp(y.reshape(y.shape[0], self.num_primary, self.primary_dim))
    v, couplings, activations = self.digits(u)  # its scopes: votes, routing
    lengths = safe_length(v) if activations is None else activations
    if self.decoder is None:
      return EfficientOutput(lengths, v, None, couplings)
    chosen = labels if labels is not None else jnp.argmax(lengths, axis=-1)
    return EfficientOutput(lengths, v, self.decode(v, chosen), couplings)

  def decode(self, v: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """The decoder on digit capsules v [B, classes, digit_dim] masked to `classes` [B] (the
    official `Mask`; `Decoder.masked`): [B, H, W, C] float32 in [0, 1].

    Raises:
      ValueError: the network was built without its decoder (`reconstruction=False`).
    """
    if self.decoder is None:
      raise ValueError("this Efficient-CapsNet was built without its decoder "
                       "(reconstruction=False): it has no reconstructions.")
    return self.decoder.masked(v, classes)


def _feature_size(side: int, primary_kernel: int) -> int:
  """The depthwise convolution's output side for an input side (pixels); < 1 if too small."""
  for _, k, s in CONVS:
    side = conv.output_size(side, k, s) if side >= k else 0
  return conv.output_size(side, primary_kernel, 1) if side >= primary_kernel else 0


def _smallest_side(primary_kernel: int) -> int:
  """The smallest input side (pixels) whose features the depthwise kernel fits."""
  return next(n for n in range(1, 10_000) if _feature_size(n, primary_kernel) >= 1)

