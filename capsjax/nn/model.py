"""CapsNet (Sabour, Frosst & Hinton 2017, Fig. 1-2) as a Flax NNX module."""

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify

from capsjax.core.squash import safe_length
from capsjax.nn import conv
from capsjax.nn.inputs import check_label_dtype, check_network_sizes, network_images
from capsjax.nn.layers import Conv2D, Decoder, DigitCaps, PrimaryCaps


VARIANTS = ("paper", "official")


class CapsNetOutput(NamedTuple):
  """CapsNet outputs.

  Attributes:
    lengths: [B, classes] class scores: the DigitCaps lengths |v_k|, or the activations a_k of a
      routing rule that carries them (em, inverted_dot_product).
    v: [B, classes, digit_dim] DigitCaps.
    reconstructions: [B, H, W, C] decoder output in [0, 1]; None for a network built without
      its decoder (`reconstruction=False`).
    couplings: [B, N_primary, classes] the routing rule's final coupling coefficients c_ij
      (Eq. 3; assignment probabilities for EM). Primary capsule i = (row * OW + col) *
      primary_channels + type on the `CapsNet.primary_grid` (OH, OW, primary_channels).
  """

  lengths: jnp.ndarray
  v: jnp.ndarray
  reconstructions: jnp.ndarray | None
  couplings: jnp.ndarray | None = None


def _is_concrete(x: Any) -> bool:
  """Whether `x` has values to read: not a tracer (inside jit, vmap, grad) nor a ShapeDtypeStruct.

  `jax.core.Tracer` is public and not deprecated in JAX 0.10 (checked on 0.10.2: jax/core.py
  exports it outside its deprecation table); `jax.core.is_concrete`, the other candidate, is
  deprecated there and so is not used.
  """
  return not isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct))


def check_labels(labels: Any, num_classes: int) -> None:
  """Checks that `labels` are integers and, when concrete, lie in [0, num_classes).

  Traced labels (inside `jax.jit`) have a dtype but no values to check: `CapsNet` then adds a
  `checkify.debug_check`, which reports them under `checkify.checkify` and costs nothing otherwise.
  capsjax's training loop checks each split's labels once, when it is loaded (`data.Split`).

  Args:
    labels: class indices of any shape (array, tracer or list); of a multi-process array only
      this process's shards are read.
    num_classes: K; valid labels are 0..K-1.

  Raises:
    ValueError: a float or bool dtype (`capsjax.nn.inputs.check_label_dtype`, the dtype named),
      or concrete values outside [0, num_classes).
  """
  check_label_dtype(labels)
  if not _is_concrete(labels):
    return
  if isinstance(labels, jax.Array) and not labels.is_fully_addressable:  # multi-process: its part
    arr = np.concatenate([np.asarray(s.data).ravel() for s in labels.addressable_shards])
  else:
    arr = np.asarray(labels)
  if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values from {arr.min()} "
                     f"to {arr.max()}.")


class CapsNet(nnx.Module):
  """Conv1 -> PrimaryCaps -> DigitCaps (routing) -> masked Decoder.

  The defaults build the paper's MNIST network: 8,215,568 parameters, 6,804,224 without the
  decoder. `model(images [B, H, W, C], labels [B] or None) -> CapsNetOutput`. With labels the
  decoder sees the true class's capsule (training); without, the highest-scoring one (testing).
  Images: uint8 0..255 (read as /255) or floating point in [0, 1] (`capsjax.nn.inputs`); labels:
  integers in [0, num_classes). ValueError (one line) for another shape, an image dtype other
  than those (int32, bool, ...: the dtype is named), labels of a float or bool dtype, or
  concrete labels out of range; inside `jax.jit` the dtype and shape checks still raise.
  `routing` names a registered rule (`capsjax.routing.available()`), `routing_options` its keyword
  options; `vote_chunk_size` switches dynamic routing to the memory-efficient chunked votes.

  `variant="official"` builds what the official TF1 code computes where it differs from the
  paper (Sarasra/models, research/capsules): PrimaryCaps squash(conv / 32 + b) without a conv
  bias; DigitCaps s_j + b_j before the squash in every routing iteration; truncated-normal
  weights (stddev 0.05 for Conv1, 0.1 elsewhere) and every bias 0.1; and (in the loss,
  `capsjax.train.archs.capsnet`) the margin loss halved and averaged over the classes. Needs routing
  "dynamic" and no vote chunking. The official learning-rate schedule (continuous decay, floor
  1e-6) is a training setting, not part of the variant: `TrainConfig(decay_staircase=False,
  min_learning_rate=1e-6)`, as the `paper` preset sets it.

  `dtype=jnp.bfloat16` runs the convolutions, the votes' matmul and the decoder's matmuls in
  bfloat16 (mixed precision); parameters, the routing (its softmax), the squash and the outputs
  stay float32. It is not a setting of the network: the parameters are the same either way.

  Args:
    input_shape: (H, W, C) of the images, in pixels and channels.
    num_classes: K >= 2, one digit capsule per class.
    conv_channels: Conv1's channels (256).
    conv_kernel: Conv1's kernel side in pixels (9; stride 1, ReLU).
    primary_channels: primary capsule types (32).
    primary_dim: primary capsule dimension (8).
    primary_kernel: PrimaryCaps' kernel side in pixels (9).
    primary_stride: PrimaryCaps' stride in pixels (2).
    digit_dim: digit capsule dimension (16).
    routing: a registered routing rule (`capsjax.routing.available()`; "dynamic": Procedure 1).
    routing_iters: routing iterations r >= 1 (3).
    routing_options: keyword options of the rule, e.g. {"leaky": True}.
    vote_chunk_size: dynamic routing only: input capsules per chunk of votes; None: all at once.
    decoder_hidden: the decoder's hidden widths ((512, 1024)).
    padding: "VALID" (the paper's MNIST network) or "SAME" (TensorFlow's, zero padding that
      keeps Conv1's size and gives ceil(size / stride) primary positions: the official CIFAR-10
      runs' `padding=SAME`).
    reconstruction: build the decoder (False: no reconstructions and no reconstruction loss,
      the official CIFAR-10 runs' `remake=false`).
    variant: "paper" or "official" (above).
    dtype: computation dtype (None: float32; jnp.bfloat16: mixed precision, above).
    rngs: initialisation keys.

  Raises:
    ValueError: an input_shape that is not three positive sizes or is too small for Conv1 and
      PrimaryCaps, num_classes < 2, routing_iters < 1, an unknown padding or variant, variant
      "official"
      with another rule or with vote chunking, or a routing rule, option or chunk size that
      `DigitCaps` refuses.
  """

  def __init__(self, *, input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
               conv_channels: int = 256, conv_kernel: int = 9, primary_channels: int = 32,
               primary_dim: int = 8, primary_kernel: int = 9, primary_stride: int = 2,
               digit_dim: int = 16, routing: str = "dynamic", routing_iters: int = 3,
               routing_options: Mapping[str, Any] | None = None,
               vote_chunk_size: int | None = None,
               decoder_hidden: Sequence[int] = (512, 1024), padding: str = "VALID",
               reconstruction: bool = True, variant: str = "paper", dtype: Any = None,
               rngs: nnx.Rngs):
    check_network_sizes(input_shape, num_classes)
    if padding not in conv.PADDINGS:
      raise ValueError(f"padding must be one of {', '.join(conv.PADDINGS)}, got {padding!r}.")
    if routing_iters < 1:
      raise ValueError(f"routing_iters must be >= 1, got {routing_iters}.")
    if variant not in VARIANTS:
      raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
    official = variant == "official"
    if official and (routing != "dynamic" or vote_chunk_size is not None):
      raise ValueError(f"variant 'official' needs routing 'dynamic' without vote chunking, got "
                       f"routing {routing!r}, vote_chunk_size {vote_chunk_size}.")
    h, w, c = input_shape
    size = lambda n, k, s: conv.padded_output_size(n, k, s, padding)
    h1, w1 = size(h, conv_kernel, 1), size(w, conv_kernel, 1)
    h2 = size(h1, primary_kernel, primary_stride) if h1 >= 1 else 0
    w2 = size(w1, primary_kernel, primary_stride) if w1 >= 1 else 0
    if min(h2, w2) < 1:
      least = conv_kernel + primary_kernel - 1
      raise ValueError(f"input_shape {tuple(input_shape)} is too small for a {conv_kernel}x"
                       f"{conv_kernel} conv followed by a {primary_kernel}x{primary_kernel} "
                       f"stride-{primary_stride} conv; the smallest input that works is "
                       f"{least}x{least} (--image-size {least}x{least} or larger).")
    self.input_shape = tuple(int(s) for s in input_shape)
    self.num_classes = num_classes
    self.num_primary = h2 * w2 * primary_channels
    self.primary_grid = (h2, w2, primary_channels)
    self.conv1 = Conv2D(c, conv_channels, conv_kernel, 1, dtype=dtype, rngs=rngs)
    self.primary = PrimaryCaps(conv_channels, primary_channels, primary_dim, primary_kernel,
                               primary_stride, official=official, dtype=dtype, rngs=rngs)
    self.digits = DigitCaps(self.num_primary, primary_dim, num_classes, digit_dim, routing,
                            routing_iters, routing_options, vote_chunk_size, bias=official,
                            dtype=dtype, rngs=rngs)
    self.decoder = Decoder(num_classes * digit_dim, decoder_hidden, self.input_shape,
                           dtype=dtype, rngs=rngs) if reconstruction else None
    self.variant, self.padding = variant, padding
    self.kernels = (conv_kernel, primary_kernel, primary_stride)
    if official:
      self._initialise_as_official(rngs)

  def _initialise_as_official(self, rngs: nnx.Rngs) -> None:
    """The official code's initialisation (`variables.py`, `layers.reconstruction`): weights
    from a normal truncated at 2 standard deviations (0.05 for Conv1, 0.1 for the others),
    every bias 0.1."""
    def normal(std: float, shape) -> jnp.ndarray:
      return std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape)

    decoder = self.decoder.layers if self.decoder is not None else []
    weights = [(self.conv1.kernel, 0.05), (self.primary.conv.kernel, 0.1), (self.digits.W, 0.1),
               *((layer.kernel, 0.1) for layer in decoder)]
    for param, std in weights:
      param[...] = normal(std, param.shape)
    biases = [self.conv1.bias, self.primary.capsule_bias, self.digits.routing_params["bias"],
              *(layer.bias for layer in decoder)]
    for param in biases:
      param[...] = jnp.full(param.shape, 0.1)

  def _inputs(self, images: Any, labels: Any) -> jnp.ndarray:
    """The checked images as float32 (`capsjax.nn.inputs`); checks `labels` (None: none)."""
    x = network_images(images, self.input_shape)
    if labels is None:
      return x
    batch = jnp.shape(images)[0]
    if tuple(jnp.shape(labels)) != (batch,):
      raise ValueError(f"labels must have shape [{batch}] (one integer class per image), got "
                       f"{tuple(jnp.shape(labels))}.")
    check_labels(labels, self.num_classes)  # the dtype always, the values when concrete
    if not _is_concrete(labels):
      checkify.debug_check(jnp.all((labels >= 0) & (labels < self.num_classes)),
                           f"labels must lie in [0, {self.num_classes - 1}], got values from "
                           "{lo} to {hi}.", lo=jnp.min(labels), hi=jnp.max(labels))
    return x

  def __call__(self, images: jnp.ndarray, labels: jnp.ndarray | None = None) -> CapsNetOutput:
    # Named scopes name the parts' ops in profiles (benchmarks/step_profile.py).
    conv_kernel, primary_kernel, primary_stride = self.kernels
    same = self.padding == "SAME"
    with jax.named_scope("conv1"):
      x = self._inputs(images, labels)
      x = jax.nn.relu(self.conv1(conv.pad_same(x, conv_kernel, 1) if same else x))
    with jax.named_scope("primary_caps"):
      u = self.primary(conv.pad_same(x, primary_kernel, primary_stride) if same else x)
    v, couplings, activations = self.digits(u)  # its scopes: votes, routing
    lengths = safe_length(v) if activations is None else activations
    if self.decoder is None:
      return CapsNetOutput(lengths=lengths, v=v, reconstructions=None, couplings=couplings)
    chosen = labels if labels is not None else jnp.argmax(lengths, axis=-1)
    return CapsNetOutput(lengths=lengths, v=v, reconstructions=self.decode(v, chosen),
                         couplings=couplings)

  def decode(self, v: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """The decoder (§4.1, Fig. 2) on the digit capsules masked to one class each.

    Args:
      v: [B, num_classes, digit_dim] digit capsules.
      classes: [B] int, the class whose capsule each example keeps (the others are zeroed).

    Returns:
      [B, H, W, C] reconstructions in [0, 1], float32.

    Raises:
      ValueError: the network was built without its decoder (`reconstruction=False`).
    """
    if self.decoder is None:
      raise ValueError("this CapsNet was built without its decoder (reconstruction=False): it "
                       "has no reconstructions.")
    return self.decoder.masked(v, classes)


def count_params(module: nnx.Module) -> int:
  """Number of scalar parameters (nnx.Param) in a module."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))
