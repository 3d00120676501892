"""What the networks read as images and labels (`capsjax.nn.inputs`): uint8 is 0..255 and is divided
by 255, floating point is [0, 1]; every other image dtype and every non-integer label dtype is
refused with one ValueError naming the dtype, by the modules themselves and by the public
functions around them."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.nn import inputs
from capsjax.nn.cnn import BaselineCNN
from capsjax.train import steps
from capsjax.train.archs import capsnet as capsnet_arch
from conftest import tiny_capsnet

rng = np.random.default_rng(0)
UINT8 = rng.integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
FLOAT = UINT8.astype(np.float32) / 255
LABELS = np.array([1, 7, 3], np.int32)


def tiny_cnn() -> BaselineCNN:
  return BaselineCNN(conv_channels=(4, 4), hidden=(8,), rngs=nnx.Rngs(0))


def _assert_same(a, b):
  """Equal up to the rounding of x / 255 (XLA's can differ from numpy's by one ulp)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _first_line(info) -> str:
  """The message itself (inside `jax.jit`, JAX appends a note about its filtered traceback)."""
  return str(info.value).splitlines()[0]


def test_to_float_reads_uint8_as_0_to_255_and_refuses_other_integers():
  np.testing.assert_array_equal(inputs.to_float(UINT8), FLOAT)
  assert isinstance(inputs.to_float(UINT8), np.ndarray)  # numpy stays on the host
  out = inputs.to_float(jnp.asarray(UINT8))
  assert out.dtype == jnp.float32 and isinstance(out, jax.Array)
  np.testing.assert_allclose(np.asarray(out), FLOAT, rtol=0, atol=1e-7)  # XLA: x * (1 / 255)
  assert inputs.to_float(FLOAT.astype(np.float64)).dtype == np.float32
  assert inputs.to_float(jnp.asarray(FLOAT, jnp.bfloat16)).dtype == jnp.float32
  for bad in (UINT8.astype(np.int32), UINT8 > 128, UINT8.astype(np.uint16)):
    with pytest.raises(ValueError, match=f"got dtype {bad.dtype}.$"):
      inputs.to_float(bad)
  assert steps.to_float is inputs.to_float  # one conversion, not two


def test_capsnet_reads_a_uint8_batch_as_the_same_batch_over_255():
  model = tiny_capsnet()
  as_uint8, as_float = model(jnp.asarray(UINT8)), model(jnp.asarray(FLOAT))
  _assert_same(as_uint8, as_float)
  with_labels = model(UINT8, jnp.asarray(LABELS))  # numpy uint8 too, with the decoder masked
  _assert_same(with_labels, model(FLOAT, jnp.asarray(LABELS)))
  jitted = jax.jit(lambda x: model(x).lengths)  # traced: the dtype is known, the values not
  np.testing.assert_allclose(jitted(UINT8), as_float.lengths, rtol=1e-5, atol=1e-7)


def test_capsnet_convolves_in_floating_point_for_uint8_input():
  model = tiny_capsnet()
  eqns = jax.make_jaxpr(lambda x: model(x))(jnp.asarray(UINT8)).jaxpr.eqns
  dots = [e for e in eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
  assert dots and all(jnp.issubdtype(e.outvars[0].aval.dtype, jnp.floating) for e in dots)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint16, np.bool_])
def test_modules_refuse_other_image_dtypes(dtype):
  bad = UINT8.astype(dtype)
  name = np.dtype(dtype).name
  for call in (lambda: tiny_capsnet()(bad), lambda: tiny_cnn()(bad),
               lambda: jax.jit(lambda x: tiny_capsnet()(x).lengths)(bad)):
    with pytest.raises(ValueError) as info:
      call()
    assert _first_line(info) == ("images must be uint8 (0..255) or floating point in [0, 1], got "
                                 f"dtype {name}.")


def test_modules_refuse_float_images_outside_0_1_in_eager_calls():
  """A float batch of 0..255 pixels is not read as a saturated one (the values are checked
  where they are concrete; under jit only the dtype and shape can be)."""
  pixels = UINT8.astype(np.float32)  # 0..255, float
  for call in (lambda: tiny_capsnet()(pixels), lambda: tiny_cnn()(pixels),
               lambda: tiny_capsnet()(np.full_like(FLOAT, np.nan))):
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values"):
      call()
  tiny_capsnet()(FLOAT)  # in range: accepted


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_capsnet_refuses_labels_that_are_not_integers(dtype):
  model = tiny_capsnet()
  labels = LABELS.astype(dtype)
  name = np.asarray(labels).dtype.name
  with pytest.raises(ValueError, match=f"^labels must be integers, got dtype {name}.$"):
    model(FLOAT, labels)
  with pytest.raises(ValueError) as info:
    jax.jit(lambda x, y: model(x, y).lengths)(FLOAT, labels)  # refused while tracing
  assert _first_line(info) == f"labels must be integers, got dtype {jnp.asarray(labels).dtype}."
  with pytest.raises(ValueError, match="labels must be integers"):
    capsnet_arch.loss_fn()(model, FLOAT, labels, train=True)


def test_baseline_reads_uint8_as_the_batch_over_255():
  model = tiny_cnn()
  _assert_same(model(UINT8), model(FLOAT))
  _assert_same(model(jnp.asarray(UINT8)), model(jnp.asarray(FLOAT)))
  key = jax.random.key(1)
  _assert_same(model(UINT8, dropout_key=key), model(FLOAT, dropout_key=key))


def test_both_networks_check_the_shape_with_one_message():
  expected = r"^images must have shape \[B, 28, 28, 1\] \(NHWC\), got \(28, 28, 1\).$"
  for model in (tiny_capsnet(), tiny_cnn()):
    with pytest.raises(ValueError, match=expected):
      model(FLOAT[0])


def test_outputs_step_reads_uint8_and_refuses_int32():
  model = tiny_capsnet()
  graphdef, state = nnx.split(model)
  step = steps.make_outputs_step(graphdef, capsnet_arch.outputs)
  _assert_same(step(state, UINT8), step(state, FLOAT))
  with pytest.raises(ValueError) as info:
    step(state, UINT8.astype(np.int32))
  assert _first_line(info).endswith("got dtype int32.")


def test_tensorboard_grid_reads_uint8_as_0_to_255(tmp_path, monkeypatch):
  pytest.importorskip("tensorboardX")
  from capsjax.train.tensorboard import TensorBoardWriter

  writer = TensorBoardWriter(tmp_path)
  grids = []
  monkeypatch.setattr(writer._writer, "add_image", lambda tag, grid, *a, **k: grids.append(grid))
  writer.images(1, UINT8, FLOAT)
  writer.close()
  top, bottom = np.split(grids[0], 2, axis=0)
  np.testing.assert_allclose(top, bottom, rtol=0, atol=1e-7)
  with pytest.raises(ValueError, match="got dtype int32.$"):
    writer.images(2, UINT8.astype(np.int32), FLOAT)


def test_the_modules_emit_no_deprecation_warning():
  model = tiny_capsnet()
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    model(UINT8, LABELS)
    jax.jit(lambda x, y: model(x, y).lengths)(UINT8, LABELS)
    tiny_cnn()(UINT8)


def test_reconstruction_loss_reads_uint8_targets_as_0_to_255():
  """The public loss takes images too: uint8 targets are /255, not compared as 0..255."""
  from capsjax.nn import losses
  recon = np.full((3, 28, 28, 1), 0.5, np.float32)
  np.testing.assert_allclose(losses.reconstruction_loss(recon, UINT8),
                             losses.reconstruction_loss(recon, FLOAT), rtol=1e-5)
  with pytest.raises(ValueError, match="got dtype int32"):
    losses.reconstruction_loss(recon, UINT8.astype(np.int32))
