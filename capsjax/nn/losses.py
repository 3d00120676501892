"""CapsNet losses: margin loss (Eq. 4) and the decoder's reconstruction loss (Sec. 4.1)."""

import jax
import jax.numpy as jnp

from capsjax.nn.inputs import to_float

RECONSTRUCTION_WEIGHT = 0.0005


def margin_loss(lengths: jnp.ndarray, labels_onehot: jnp.ndarray, m_plus: float = 0.9,
                m_minus: float = 0.1, lam: float = 0.5) -> jnp.ndarray:
  """The margin loss (Eq. 4) summed over classes.

  L_k = T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2.

  Args:
    lengths: [B, K] capsule lengths |v_k| (class scores).
    labels_onehot: [B, K] targets T_k in {0, 1} (two-hot for MultiMNIST).
    m_plus: m+, the length a present class should reach (0.9).
    m_minus: m-, the length an absent class should stay under (0.1).
    lam: lambda, the down-weighting of absent classes (0.5).

  Returns:
    [B] per-example loss, sum_k L_k.
  """
  present = labels_onehot * jnp.square(jnp.maximum(0.0, m_plus - lengths))
  absent = lam * (1.0 - labels_onehot) * jnp.square(jnp.maximum(0.0, lengths - m_minus))
  return jnp.sum(present + absent, axis=-1)


def reconstruction_loss(recon: jnp.ndarray, images: jnp.ndarray) -> jnp.ndarray:
  """Sum (not mean) of squared pixel errors per example.

  Args:
    recon: [B, H, W, C] decoder output in [0, 1].
    images: [B, H, W, C] targets: uint8 (0..255, read as /255) or float in [0, 1]
      (`capsjax.nn.inputs.to_float`).

  Returns:
    [B] per-example sum of squared errors (float32), unweighted (the loss uses
      RECONSTRUCTION_WEIGHT x this, §4.1).

  Raises:
    ValueError: `images` of a dtype other than uint8 or floating point, naming it.
  """
  diff = (recon - to_float(images)).reshape(recon.shape[0], -1)
  return jnp.sum(jnp.square(diff), axis=-1)


def two_hot(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """[B, 2] class pairs -> [B, K] targets with a 1 at each of the two classes (MultiMNIST, §6)."""
  return jnp.max(jax.nn.one_hot(labels, num_classes), axis=-2)


def two_digit_terms(lengths: jnp.ndarray, labels: jnp.ndarray, reconstructions: jnp.ndarray,
                    digits: jnp.ndarray, recon_weight: float = RECONSTRUCTION_WEIGHT):
  """MultiMNIST's training loss (§6) per example: Eq. 4 against the two-hot target, plus each
  digit's reconstruction error (a sum of squares, from its own true class's capsule, against
  that digit's own shifted image, as the official code's `_remake` does per digit), weighted.

  Args:
    lengths: [B, K] capsule lengths.
    labels: [B, 2] int, the two classes.
    reconstructions: [B, 2, H, W, C] the decoder's output for each digit's class.
    digits: [B, 2, H, W, C] float in [0, 1], each digit alone on the canvas.
    recon_weight: weight of the summed reconstruction error (0.0005, §4.1).

  Returns:
    (total [B] = margin + recon_weight * recon, margin [B], recon_1 + recon_2 [B]).
  """
  margin = margin_loss(lengths, two_hot(labels, lengths.shape[-1]))
  recon = sum(reconstruction_loss(reconstructions[:, i], digits[:, i]) for i in range(2))
  return margin + recon_weight * recon, margin, recon
