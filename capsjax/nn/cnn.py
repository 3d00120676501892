"""The paper's baseline CNN (§5) as a Flax NNX module."""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax.nn.inputs import check_network_sizes, network_images
from capsjax.nn.layers import Conv2D


class BaselineCNN(nnx.Module):
  """Convolutions (5x5, stride 1, SAME, ReLU) -> fully connected (ReLU) -> dropout -> logits.

  The defaults build the paper's MNIST baseline (§5): convolutions of 256, 256 and 128 channels,
  fully connected layers of 328 and 192, dropout into a 10-way softmax; with SAME padding and no
  pooling that is 35,445,522 parameters (the paper's 35.4M). The paper does not give the dropout
  rate; 0.5 is the usual one. `model(images [B, H, W, C], dropout_key=None) -> logits [B, classes]`
  float32; dropout is applied only when `dropout_key` is given (training). Images: uint8 0..255
  (read as /255) or floating point in [0, 1] (`capsjax.nn.inputs`, as for `CapsNet`); ValueError
  (one line) for another shape or another dtype (int32, bool, ...: named). `dtype` (e.g.
  bfloat16): the convolutions' and matmuls' (parameters and logits stay float32).

  Args:
    input_shape: (H, W, C) of the images, in pixels and channels.
    num_classes: K >= 2 logits.
    conv_channels: output channels of each convolution, in order.
    conv_kernel: odd kernel side in pixels (SAME padding of conv_kernel // 2).
    hidden: widths of the fully connected ReLU layers, in order.
    dropout: rate in [0, 1) applied before the logits when training.
    dtype: computation dtype; None: float32.
    rngs: initialisation keys.

  Raises:
    ValueError: an input_shape that is not three positive sizes, num_classes < 2, an even or
      non-positive conv_kernel, or dropout outside [0, 1).
  """

  def __init__(self, *, input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
               conv_channels: Sequence[int] = (256, 256, 128), conv_kernel: int = 5,
               hidden: Sequence[int] = (328, 192), dropout: float = 0.5, dtype: Any = None,
               rngs: nnx.Rngs):
    check_network_sizes(input_shape, num_classes)
    if conv_kernel < 1 or conv_kernel % 2 == 0:
      raise ValueError(f"conv_kernel must be odd and positive (SAME padding), got {conv_kernel}.")
    if not 0 <= dropout < 1:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    h, w, c = (int(s) for s in input_shape)
    channels = [c, *conv_channels]
    self.convs = nnx.List([Conv2D(a, b, conv_kernel, 1, dtype=dtype, rngs=rngs)
                           for a, b in zip(channels[:-1], channels[1:])])
    sizes = [h * w * channels[-1], *hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.dropout = nnx.Dropout(dropout)
    self.logits = nnx.Linear(sizes[-1], num_classes, dtype=dtype, rngs=rngs)
    self.input_shape = (h, w, c)
    self.num_classes = num_classes
    self.padding = conv_kernel // 2

  def __call__(self, images: jnp.ndarray, dropout_key: jax.Array | None = None) -> jnp.ndarray:
    p = self.padding
    x = network_images(images, self.input_shape)
    for conv in self.convs:  # SAME = zero padding, then the VALID gather + GEMM convolution
      x = jax.nn.relu(conv(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))))
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    x = self.dropout(x, deterministic=dropout_key is None, rngs=dropout_key)
    return self.logits(x).astype(jnp.float32)
