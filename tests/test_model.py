import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import capsjax
from capsjax import conv
from conftest import tiny_capsnet


def test_paper_parameter_counts():
  model = capsjax.CapsNet(rngs=nnx.Rngs(0))
  total = capsjax.count_params(model)
  decoder = capsjax.count_params(model.decoder)
  assert total == 8_215_568  # paper: 8.2M
  assert total - decoder == 6_804_224  # paper: 6.8M without the decoder
  assert model.digits.W.shape == (1152, 10, 16, 8)
  assert model.num_primary == 1152


@pytest.mark.parametrize("shape,kernel,stride", [((2, 28, 28, 1), 9, 1), ((2, 20, 20, 6), 9, 2),
                                                 ((1, 11, 9, 3), 3, 2)])
def test_conv_matches_lax(shape, kernel, stride):
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, shape)
  w = jax.random.normal(k2, (kernel, kernel, shape[-1], 5)) / (kernel * shape[-1] ** 0.5)
  b = jnp.arange(5.0)
  ref = jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
  np.testing.assert_allclose(conv.conv2d(x, w, b, stride, "gemm"), ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(conv.conv2d(x, w, b, stride, "native"), ref, rtol=1e-6, atol=1e-6)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  g_ours = jax.grad(loss(lambda x, w: conv.conv2d(x, w, b, stride, "gemm")), argnums=(0, 1))(x, w)
  g_ref = jax.grad(loss(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b),
                   (0, 1))(x, w)
  for a, r in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


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


def test_vote_chunk_size_gives_the_same_network_output():
  plain, chunked = tiny_capsnet(seed=4), tiny_capsnet(seed=4, vote_chunk_size=7)
  images = jax.random.uniform(jax.random.key(3), (2, 28, 28, 1))
  a, b = plain(images), chunked(images)
  np.testing.assert_allclose(b.lengths, a.lengths, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b.reconstructions, a.reconstructions, rtol=1e-5, atol=1e-6)


def test_routing_parameters_are_trained_and_checkpointed(tmp_path):
  from capsjax import steps
  from capsjax.checkpoint import Checkpointer

  def state(seed):
    model = tiny_capsnet(seed, routing="em")
    return nnx.split((model, nnx.Optimizer(model, steps.make_optimizer(1e-2, 1.0, 100),
                                           wrt=nnx.Param)))

  graphdef, s = state(0)
  before = np.array(s[0]["digits"]["routing_params"]["beta_a"][...])
  train_step = steps.make_train_step(graphdef, max_shift=0, recon_weight=0.0005)
  images = np.random.default_rng(0).integers(0, 255, (4, 28, 28, 1), dtype=np.uint8)
  s, _ = train_step(s, images, np.array([0, 1, 2, 3], np.int32), jax.random.key(0))
  after = np.array(s[0]["digits"]["routing_params"]["beta_a"][...])
  assert np.abs(after - before).max() > 0  # the optimizer updates the rule's parameters
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, s, {"seed": 0})
  _, fresh = state(1)
  restored, _ = ckpt.restore(fresh)
  ckpt.close()
  np.testing.assert_array_equal(np.array(restored[0]["digits"]["routing_params"]["beta_a"][...]),
                                after)
