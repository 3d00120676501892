import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from capsjax.nn import losses
from capsjax.train import archs
from capsjax.train.archs import capsnet as capsnet_arch
from capsjax.train.config import TrainConfig
from conftest import tiny_capsnet


def test_margin_loss_hand_computed():
  lengths = jnp.array([[0.95, 0.05, 0.5], [0.2, 0.9, 0.0]])
  onehot = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  # ex 0: present 0.95 >= 0.9 -> 0; absent 0.05 <= 0.1 -> 0; absent 0.5 -> 0.5*(0.4)^2 = 0.08
  # ex 1: present (0.9-0.2)^2 = 0.49; absent 0.9 -> 0.5*0.8^2 = 0.32; absent 0.0 -> 0
  np.testing.assert_allclose(losses.margin_loss(lengths, onehot), [0.08, 0.81], rtol=1e-6)


def test_margin_loss_parameters():
  out = losses.margin_loss(jnp.array([[0.5, 0.5]]), jnp.array([[1.0, 0.0]]), m_plus=0.8,
                           m_minus=0.2, lam=1.0)
  np.testing.assert_allclose(out, [0.09 + 0.09], rtol=1e-6)


def test_reconstruction_loss_is_sum_not_mean():
  images = jnp.zeros((2, 2, 2, 1))
  recon = jnp.array([[[[1.0], [0.0]], [[0.0], [0.5]]], [[[0.1], [0.1]], [[0.1], [0.1]]]])
  np.testing.assert_allclose(losses.reconstruction_loss(recon, images), [1.25, 0.04], rtol=1e-6)


def test_training_loss_is_margin_plus_weighted_reconstruction():
  # The loss the loop trains CapsNet with (`Arch.loss(config)`), per example: margin loss +
  # 0.0005 x reconstruction loss, each as computed by hand from the network's outputs.
  model = tiny_capsnet()
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)), jnp.float32)
  labels = jnp.array([3, 8])
  out = archs.get("capsnet").loss(TrainConfig())(model, images, labels, train=True)
  net = model(images, labels)
  margin = losses.margin_loss(net.lengths, jax.nn.one_hot(labels, 10))
  recon = losses.reconstruction_loss(net.reconstructions, images)
  np.testing.assert_allclose(out.terms["margin_loss"], margin, rtol=1e-6)
  np.testing.assert_allclose(out.terms["reconstruction_loss"], recon, rtol=1e-6)
  np.testing.assert_allclose(out.total, margin + 0.0005 * recon, rtol=1e-6)
  assert losses.RECONSTRUCTION_WEIGHT == 0.0005 == TrainConfig().recon_weight


def test_gradient_through_the_model_finite_when_every_capsule_is_zero():
  # Black images and zero biases make every primary capsule, vote and DigitCaps capsule the zero
  # vector: squash(0) and the class scores safe_length(0) must still have finite gradients.
  model = tiny_capsnet()
  images, labels = jnp.zeros((2, 28, 28, 1)), jnp.array([1, 7])

  def loss(m):  # the training loss (as the loop's step takes it: the batch mean)
    return jnp.mean(capsnet_arch.loss_fn()(m, images, labels, train=True).total)

  @nnx.jit
  def zeros_and_gradients(m):
    primary = m.primary(jax.nn.relu(m.conv1(images)))
    return primary, m(images, labels).v, nnx.grad(loss)(m)

  primary, v, grads = zeros_and_gradients(model)
  np.testing.assert_array_equal(primary, 0.0)
  np.testing.assert_array_equal(v, 0.0)
  chex.assert_tree_all_finite(nnx.state(grads))
