import chex
import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import capsjax
from capsjax.nn import conv
from capsjax.train.archs import capsnet as capsnet_arch
from conftest import tiny_capsnet
from real_path import Trainer


def test_paper_parameter_counts():
  model = capsjax.CapsNet(rngs=nnx.Rngs(0))
  total = capsjax.count_params(model)
  decoder = capsjax.count_params(model.decoder)
  assert total == 8_215_568  # paper: 8.2M
  assert total - decoder == 6_804_224  # paper: 6.8M without the decoder
  assert model.digits.W.shape == (1152, 10, 16, 8)
  assert model.num_primary == 1152


def conv_reference(x, w, b, stride):
  """VALID NHWC x HWIO convolution with explicit loops over output positions (float64)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  batch, h, width, _ = x.shape
  k, _, _, c_out = w.shape
  oh, ow = (h - k) // stride + 1, (width - k) // stride + 1
  y = np.zeros((batch, oh, ow, c_out))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      y[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
  return y + np.asarray(b)


@pytest.mark.parametrize("impl", ["gemm", "native"])
@pytest.mark.parametrize("shape,kernel,stride", [((2, 28, 28, 1), 9, 1), ((2, 20, 20, 6), 9, 2),
                                                 ((1, 11, 9, 3), 3, 2)])
def test_conv_matches_loop_reference(impl, shape, kernel, stride):
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, shape)
  w = jax.random.normal(k2, (kernel, kernel, shape[-1], 5)) / (kernel * shape[-1] ** 0.5)
  b = jnp.arange(5.0)
  np.testing.assert_allclose(conv.conv2d(x, w, b, stride, impl), conv_reference(x, w, b, stride),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,kernel,stride", [((2, 28, 28, 1), 9, 1), ((2, 20, 20, 6), 9, 2),
                                                 ((1, 11, 9, 3), 3, 2)])
def test_conv_gradients_match_lax(shape, kernel, stride):
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, shape)
  w = jax.random.normal(k2, (kernel, kernel, shape[-1], 5)) / (kernel * shape[-1] ** 0.5)
  b = jnp.arange(5.0)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  g_ours = jax.grad(loss(lambda x, w: conv.conv2d(x, w, b, stride, "gemm")), argnums=(0, 1))(x, w)
  g_ref = jax.grad(loss(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b),
                   (0, 1))(x, w)
  for a, r in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("platform, op", [("cpu", "stablehlo.dot_general"),
                                          ("cuda", "stablehlo.convolution")])
def test_conv_auto_picks_gemm_on_cpu_and_native_elsewhere(platform, op):
  """Decided by the platform the program is lowered for, not by the backend present: a program
  exported for a GPU from this CPU-only machine has native convolutions."""
  x, w, b = jnp.ones((1, 11, 11, 2)), jnp.ones((3, 3, 2, 4)), jnp.zeros(4)
  auto = jax.jit(lambda x: conv.conv2d(x, w, b, 2, "auto"))
  text = export.export(auto, platforms=[platform])(x).mlir_module()
  other = {"stablehlo.dot_general", "stablehlo.convolution"} - {op}
  assert op in text and not any(o in text for o in other), text
  np.testing.assert_allclose(auto(x), conv_reference(x, w, b, 2), rtol=1e-5)


def test_conv_rejects_unknown_impl():
  with pytest.raises(ValueError, match="impl must be one of auto, gemm, native"):
    conv.conv2d(jnp.zeros((1, 9, 9, 1)), jnp.zeros((9, 9, 1, 1)), jnp.zeros(1), 1, "fft")


class CapsNetTest(chex.TestCase):

  def setUp(self):
    self.model = tiny_capsnet()
    self.images = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_shapes(self):
    out = self.variant(lambda x: self.model(x))(self.images)
    chex.assert_shape(out.lengths, (3, 10))
    chex.assert_shape(out.v, (3, 10, 6))
    chex.assert_shape(out.reconstructions, (3, 28, 28, 1))
    self.assertTrue(bool(jnp.all((out.lengths > 0) & (out.lengths < 1))))
    self.assertTrue(bool(jnp.all((out.reconstructions >= 0) & (out.reconstructions <= 1))))

  def test_decoder_masked_by_label_or_longest_capsule(self):
    labels = jnp.array([0, 5, 9])
    with_labels = self.model(self.images, labels)
    predicted = self.model(self.images)
    v = predicted.v
    for chosen, out in [(labels, with_labels), (jnp.argmax(predicted.lengths, -1), predicted)]:
      masked = v * jax.nn.one_hot(chosen, 10)[..., None]
      np.testing.assert_allclose(out.reconstructions, self.model.decoder(masked.reshape(3, -1)),
                                 rtol=1e-5, atol=1e-6)
    # Capsules themselves do not depend on the labels; only the decoder input does.
    np.testing.assert_allclose(with_labels.v, v, rtol=1e-6)
    other = self.model(self.images, jnp.array([1, 6, 8]))
    self.assertGreater(float(jnp.abs(other.reconstructions - with_labels.reconstructions).max()),
                       1e-6)

  def test_other_input_shapes_and_classes(self):
    model = tiny_capsnet(input_shape=(32, 32, 3), num_classes=4, routing_iters=1)
    out = model(jnp.zeros((2, 32, 32, 3)), jnp.array([0, 3]))
    chex.assert_shape(out.lengths, (2, 4))
    chex.assert_shape(out.reconstructions, (2, 32, 32, 3))
    self.assertEqual(model.num_primary, 8 * 8 * 4)

  def test_bad_images_raise(self):
    for bad in (jnp.zeros((28, 28, 1)), jnp.zeros((2, 28, 28, 3)), jnp.zeros((2, 1, 28, 28)),
                jnp.zeros((2, 32, 32, 1))):
      with self.assertRaisesRegex(ValueError, r"\[B, 28, 28, 1\]"):
        self.model(bad)

  def test_bad_labels_raise(self):
    with self.assertRaisesRegex(ValueError, r"\[0, 9\]"):
      self.model(self.images, jnp.array([0, 10, 1]))
    with self.assertRaisesRegex(ValueError, r"\[0, 9\]"):
      self.model(self.images, jnp.array([-1, 0, 1]))
    with self.assertRaisesRegex(ValueError, "labels must have shape"):
      self.model(self.images, jnp.array([0, 1]))

  def test_bad_constructor_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "routing_iters"):
      tiny_capsnet(routing_iters=0)
    with self.assertRaisesRegex(ValueError, "too small"):
      tiny_capsnet(input_shape=(12, 12, 1))
    with self.assertRaisesRegex(ValueError, "unknown routing rule 'nope'; available: dynamic"):
      tiny_capsnet(routing="nope")
    with self.assertRaisesRegex(ValueError, "routing rule 'em' does not take option.s. leaky"):
      tiny_capsnet(routing="em", routing_options={"leaky": True})
    with self.assertRaisesRegex(ValueError, "vote_chunk_size works with routing 'dynamic' only"):
      tiny_capsnet(routing="uniform", vote_chunk_size=8)


@pytest.mark.parametrize("rule", ["dynamic", "em", "inverted_dot_product", "self_attention",
                                  "uniform"])
def test_capsnet_with_each_rule_has_finite_scores_and_gradients(rule):
  model = tiny_capsnet(routing=rule)
  images = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
  out = model(images, jnp.array([3, 4]))
  chex.assert_shape(out.lengths, (2, 10))
  assert bool(jnp.all((out.lengths > 0) & (out.lengths < 1)))
  loss = lambda m: jnp.sum(m(images, jnp.array([3, 4])).lengths)
  grads = nnx.grad(loss)(model)
  chex.assert_tree_all_finite(nnx.state(grads))
  if rule in ("em", "inverted_dot_product", "self_attention"):  # the rule's own parameters
    assert model.digits.routing_params and all(
        float(jnp.abs(g[...]).max()) > 0 for g in grads.digits.routing_params.values())


def test_vote_chunk_size_gives_the_same_network_output_and_gradients():
  # 144 primary capsules in chunks of 7: 21 chunks, the last one padded.
  plain, chunked = tiny_capsnet(seed=4), tiny_capsnet(seed=4, vote_chunk_size=7)
  for m in (plain, chunked):  # votes large enough for the agreement (and its gradient) to
    m.digits.W[...] = 30.0 * m.digits.W[...]  # matter: lengths ~0.02-0.15, not ~3e-4 as at init
  images = jax.random.uniform(jax.random.key(3), (2, 28, 28, 1))
  labels = jnp.array([2, 5])
  forward = nnx.jit(lambda m: m(images, labels))
  a, b = forward(plain), forward(chunked)
  np.testing.assert_allclose(b.lengths, a.lengths, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b.reconstructions, a.reconstructions, rtol=1e-5, atol=1e-6)

  def loss(m):
    out = m(images, labels)
    margin = capsjax.nn.losses.margin_loss(out.lengths, jax.nn.one_hot(labels, 10))
    return jnp.sum(margin + 0.0005 * capsjax.nn.losses.reconstruction_loss(out.reconstructions,
                                                                        images))

  grad = nnx.jit(nnx.grad(loss))
  g_plain, g_chunked = nnx.state(grad(plain)), nnx.state(grad(chunked))
  assert float(jnp.abs(g_plain["digits"]["W"][...]).max()) > 0
  chex.assert_trees_all_close(g_chunked, g_plain, rtol=1e-4, atol=1e-7)


def test_routing_parameters_are_trained_and_checkpointed(tmp_path):
  from capsjax import data
  from capsjax.infra.checkpoint import Checkpointer
  from capsjax.train import steps

  def state(seed):
    model = tiny_capsnet(seed, routing="em")
    return nnx.split((model, nnx.Optimizer(model, steps.make_optimizer(1e-2, 1.0, 100),
                                           wrt=nnx.Param)))

  graphdef, s = state(0)
  before = np.array(s[0]["digits"]["routing_params"]["beta_a"][...])
  images = np.random.default_rng(0).integers(0, 255, (4, 28, 28, 1), dtype=np.uint8)
  split = data.Split(images, np.array([0, 1, 2, 3], np.int32), 10)
  s, _ = Trainer(graphdef, capsnet_arch.loss_fn(0.0005), split, 4, capacity=1)(s, 0, 1)
  after = np.array(s[0]["digits"]["routing_params"]["beta_a"][...])
  assert np.abs(after - before).max() > 0  # the optimizer updates the rule's parameters
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, s, {"seed": 0})
  _, fresh = state(1)
  restored, _ = ckpt.restore(fresh)
  ckpt.close()
  np.testing.assert_array_equal(np.array(restored[0]["digits"]["routing_params"]["beta_a"][...]),
                                after)


def test_paper_preset_builds_end_to_end():
  # The loop's programs built and traced at their real sizes (60,000 training images on the
  # device, K steps of batch 128 per dispatch; eval batches over the 10,000 test images), not run.
  from capsjax import data
  from capsjax.core import streams
  from capsjax.data import datasets
  from capsjax.train import archs, model_state, presets, steps

  config = presets.get("paper").validate()
  assert config.total_steps(60_000) == 100 * 468 and config.eval_every == 5 * 468
  split = data.Split(np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int32), 10)
  graphdef, state = model_state.create_state(model_state.model_settings(config, split), config)
  model, optimizer = nnx.merge(graphdef, state)
  assert capsjax.count_params(model) == 8_215_568 and model.digits.num_iters == 3
  schedule = steps.make_schedule(config.learning_rate, config.decay_rate, config.decay_steps)
  np.testing.assert_allclose([schedule(0), schedule(2000)], [1e-3, 0.96e-3], rtol=1e-6)
  dataset = datasets.get(config.dataset)
  loss_fn = dataset.loss(archs.get(config.arch), config)
  chunk = steps.make_train_chunk(graphdef, loss_fn,
                                 builder=dataset.builder(config, "train", split))
  stored = lambda n: (jax.ShapeDtypeStruct((n, 28, 28, 1), jnp.uint8),
                      jax.ShapeDtypeStruct((n,), jnp.int32))
  k = config.steps_per_dispatch or config.log_every
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  new_state, result = jax.eval_shape(
      chunk, state, *stored(60_000), jax.ShapeDtypeStruct((k, config.batch_size), jnp.int32),
      scalar, scalar, streams.run_keys(config.seed))
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  assert result.metrics.loss.shape == (k,) and result.metrics.finite.shape == (k,)
  eval_step = steps.make_eval_step(graphdef, loss_fn, dataset.builder(config, "test", split))
  size = config.eval_batch_size or steps.default_eval_batch_size()  # None: the backend's
  metrics = jax.eval_shape(eval_step, state, *stored(10_000),
                           jax.ShapeDtypeStruct((size,), jnp.int32),
                           jax.ShapeDtypeStruct((size,), jnp.bool_))
  assert metrics.count.shape == () and metrics.finite is None
