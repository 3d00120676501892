"""2-D convolution as an explicit patch gather followed by one GEMM.

XLA:CPU's native convolution is slow for CapsNet's 9x9 kernels (its backward pass most of all,
against a matmul of the same FLOPs; measured figures: docs/results.md), so on CPU the layers use
this formulation: patches are gathered with precomputed indices and contracted with the kernel in
a single large matmul, and autodiff turns the gather into a scatter-add. On other backends
`impl="auto"` uses XLA's native convolution.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "gemm", "native")
# The name scope of the gemm path's patch gather, which names its ops in lowered programs
# (benchmarks/gpu_program_check.py counts them).
PATCH_GATHER_SCOPE = "patch_gather"


def output_size(size: int, kernel: int, stride: int) -> int:
  """Spatial size (pixels) of a VALID convolution's output: (size - kernel) // stride + 1."""
  return (size - kernel) // stride + 1


PADDINGS = ("VALID", "SAME")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) zero padding, in pixels, that makes a VALID convolution of a `size` input
  TensorFlow's SAME one: output ceil(size / stride), the odd pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def pad_same(x: jnp.ndarray, kernel: int, stride: int) -> jnp.ndarray:
  """[B, H, W, C] zero padded (`same_padding` of H and of W) so that a VALID convolution of it
  is TensorFlow's SAME one of `x`."""
  return jnp.pad(x, ((0, 0), same_padding(x.shape[1], kernel, stride),
                     same_padding(x.shape[2], kernel, stride), (0, 0)))


def padded_output_size(size: int, kernel: int, stride: int, padding: str = "VALID") -> int:
  """Spatial size (pixels) of a VALID (`output_size`) or SAME (ceil(size / stride))
  convolution's output."""
  return -(-size // stride) if padding == "SAME" else output_size(size, kernel, stride)


@functools.lru_cache(maxsize=None)
def _patch_indices(height: int, width: int, kernel: int, stride: int) -> np.ndarray:
  """[OH*OW, kernel*kernel] flat input positions read by each output position."""
  oh, ow = output_size(height, kernel, stride), output_size(width, kernel, stride)
  rows = (np.arange(oh) * stride)[:, None, None, None] + np.arange(kernel)[None, None, :, None]
  cols = (np.arange(ow) * stride)[None, :, None, None] + np.arange(kernel)[None, None, None, :]
  return (rows * width + cols).reshape(oh * ow, kernel * kernel)


def extract_patches(x: jnp.ndarray, kernel: int, stride: int) -> jnp.ndarray:
  """VALID patches of a batch of images.

  Args:
    x: [B, H, W, C].
    kernel: patch side k in pixels (k x k patches).
    stride: step between patches in pixels, the same in both spatial dimensions.

  Returns:
    [B, OH*OW, kernel*kernel*C], ordered (kernel row, kernel col, channel) like an HWIO kernel.
  """
  b, h, w, c = x.shape
  idx = _patch_indices(h, w, kernel, stride)
  return x.reshape(b, h * w, c)[:, idx].reshape(b, idx.shape[0], kernel * kernel * c)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray, stride: int,
           impl: str = "auto") -> jnp.ndarray:
  """VALID 2-D convolution, numerically equal to `lax.conv_general_dilated` (NHWC, HWIO).

  Args:
    x: [B, H, W, C_in].
    kernel: [k, k, C_in, C_out].
    bias: [C_out].
    stride: the same in both spatial dimensions.
    impl: "gemm" (patch gather + one matmul), "native" (`lax.conv_general_dilated`) or "auto"
      (gemm on CPU, native elsewhere, decided when the program is lowered for its platform:
      `jax.lax.platform_dependent`).

  Returns:
    [B, OH, OW, C_out], OH = (H - k) // stride + 1 (`output_size`), likewise OW.

  Raises:
    ValueError: `impl` is not one of IMPLEMENTATIONS.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"impl must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}.")
  native = functools.partial(_native, stride=stride)
  gemm = functools.partial(_gemm, stride=stride)
  if impl == "auto":
    # Chosen when the program is lowered for its platform (not by the backend present when
    # it is traced), so that a program exported for a GPU from a CPU gets native convolutions.
    return jax.lax.platform_dependent(x, kernel, bias, cpu=gemm, default=native)
  return (native if impl == "native" else gemm)(x, kernel, bias)


def _native(x, kernel, bias, stride):
  y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias


def _gemm(x, kernel, bias, stride):
  k, _, c_in, c_out = kernel.shape
  b, h, w, _ = x.shape
  oh, ow = output_size(h, k, stride), output_size(w, k, stride)
  with jax.named_scope(PATCH_GATHER_SCOPE):
    patches = extract_patches(x, k, stride)
  y = patches.reshape(b * oh * ow, k * k * c_in) @ kernel.reshape(k * k * c_in, c_out)
  return (y + bias).reshape(b, oh, ow, c_out)
