"""CapsNet losses: margin loss (Eq. 4) and the decoder's reconstruction loss (Sec. 4.1)."""

import jax.numpy as jnp

RECONSTRUCTION_WEIGHT = 0.0005


def margin_loss(lengths: jnp.ndarray, labels_onehot: jnp.ndarray, m_plus: float = 0.9,
                m_minus: float = 0.1, lam: float = 0.5) -> jnp.ndarray:
  """Eq. 4 summed over classes.

  L_k = T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2.

  Args:
    lengths: [B, K] capsule lengths |v_k|.
    labels_onehot: [B, K] targets T_k in {0, 1}.
  Returns:
    [B] per-example loss.
  """
  present = labels_onehot * jnp.square(jnp.maximum(0.0, m_plus - lengths))
  absent = lam * (1.0 - labels_onehot) * jnp.square(jnp.maximum(0.0, lengths - m_minus))
  return jnp.sum(present + absent, axis=-1)


def reconstruction_loss(recon: jnp.ndarray, images: jnp.ndarray) -> jnp.ndarray:
  """Sum (not mean) of squared pixel errors per example.

  Args:
    recon: [B, H, W, C] decoder output in [0, 1].
    images: [B, H, W, C] targets in [0, 1].
  Returns:
    [B] per-example sum of squared errors.
  """
  diff = (recon - images).reshape(recon.shape[0], -1)
  return jnp.sum(jnp.square(diff), axis=-1)


def total_loss(margin: jnp.ndarray, recon: jnp.ndarray,
               recon_weight: float = RECONSTRUCTION_WEIGHT) -> jnp.ndarray:
  """Scalar training loss: mean over the batch of margin + 0.0005 * reconstruction.

  Args:
    margin: [B] margin losses; recon: [B] reconstruction losses.
  """
  return jnp.mean(margin + recon_weight * recon)
