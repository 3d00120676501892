"""What the networks read as images and labels: one rule, checked and converted here only.

Images are [B, H, W, C] (NHWC) and either
- uint8: 0..255, read as float32 / 255; or
- floating point (any width, bfloat16 included): already in [0, 1], cast to float32.
Every other dtype is refused with a ValueError naming it: other integers (int8, int32, uint16,
...) have no agreed scale (0..255? 0..65535? 0..1?) and bool is a mask, not an image, so neither
is guessed. Labels are integer class indices of any integer dtype; float and bool labels are
refused (a float label is no class index, and `jax.nn.one_hot` would only warn).

Dtypes and shapes are checked here always (known while tracing, so the checks hold inside
`jax.jit` too); the [0, 1] range of float images only where the values are concrete (an eager
call: a float batch of 0..255 pixels is refused, not read as saturated). Label values (< classes)
are `capsjax.nn.model.check_labels`'; `capsjax.data.check_batch` checks whole host batches.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# What the image checks say they expect (`capsjax.data.check_batch` says the same).
IMAGE_DTYPES = "uint8 (0..255) or floating point in [0, 1]"


def _dtype(x: Any) -> np.dtype:
  """The dtype of an array, tracer or ShapeDtypeStruct; of `np.asarray(x)` for anything else."""
  return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def to_float(images: Any) -> Any:
  """Images as float32 in [0, 1]: uint8 divided by 255, floating point cast to float32.

  Args:
    images: any shape; uint8 (0..255) or floating point (in [0, 1]; not checked). A numpy array
      (or list) stays numpy (on the host), a jax array or tracer stays jax.

  Returns:
    the same shape, float32.

  Raises:
    ValueError: for any other dtype (bool, int8, int32, uint16, ...), naming it.
  """
  if not hasattr(images, "dtype"):
    images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / np.float32(255)
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(np.float32)
  raise ValueError(f"images must be {IMAGE_DTYPES}, got dtype {images.dtype}.")


def check_image_shape(images: Any, input_shape: Sequence[int]) -> None:
  """Checks that `images` is a batch [B, *input_shape] (input_shape = (H, W, C)).

  Raises:
    ValueError: for any other shape (rank other than 4, or other H, W or C), naming it.
  """
  shape = tuple(jnp.shape(images))
  if len(shape) != 4 or shape[1:] != tuple(input_shape):
    raise ValueError(f"images must have shape [B, {', '.join(map(str, input_shape))}] (NHWC), "
                     f"got {shape}.")


def _concrete_float(images: Any) -> bool:
  """Whether `images` is a non-empty float array whose values this process can read."""
  if not hasattr(images, "dtype") or not jnp.issubdtype(images.dtype, jnp.floating):
    return False
  if isinstance(images, (jax.core.Tracer, jax.ShapeDtypeStruct)):
    return False
  if isinstance(images, jax.Array) and not images.is_fully_addressable:
    return False
  return bool(np.size(images))


def network_images(images: Any, input_shape: Sequence[int]) -> Any:
  """A network's input batch: `check_image_shape`, then `to_float` (float32 [B, H, W, C]).

  Args:
    images: [B, H, W, C] uint8 (0..255) or floating point in [0, 1]; array, tracer or list.
    input_shape: (H, W, C) the network takes.

  Returns:
    float32 [B, H, W, C] in [0, 1] (numpy stays numpy, jax stays jax).

  Raises:
    ValueError: for a shape other than [B, *input_shape], a dtype `to_float` refuses, or
      concrete (not traced) float values outside [0, 1] (NaN included).
  """
  check_image_shape(images, input_shape)
  if _concrete_float(images):  # read on the host: a constant inside a trace is read too
    values = np.asarray(images)
    lo, hi = float(values.min()), float(values.max())
    if not (0.0 <= lo and hi <= 1.0):
      raise ValueError(f"float images must lie in [0, 1], got values from {lo:g} to {hi:g} "
                       "(pass uint8 for 0..255).")
  return to_float(images)


def check_network_sizes(input_shape: Sequence[int], num_classes: int) -> None:
  """A network constructor's checks of its input shape (H, W, C) and class count K.

  Raises:
    ValueError: input_shape not three positive sizes, or num_classes < 2 (the value named).
  """
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ValueError(f"input_shape must be (H, W, C) with positive sizes, got {input_shape!r}.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")


def check_label_dtype(labels: Any) -> None:
  """Checks that `labels` (array, tracer, ShapeDtypeStruct or list) have an integer dtype.

  Raises:
    ValueError: for bool or floating-point labels (or any non-integer dtype), naming the dtype.
  """
  dtype = _dtype(labels)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {dtype}.")
