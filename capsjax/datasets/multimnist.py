"""MultiMNIST (§6) as a dataset: pairs of overlapping MNIST digits built on the fly.

The generator is `capsjax.multimnist`, with the official generator's construction rules but its
own random numbers (its module docstring lists what matches and what differs): 36x36 canvas,
1,000 pairs per stored digit (60M training and 10M test examples), each digit's one placement
shifted up to 4 px in all of its pairs, partners of other classes from the same split, distinct
for one digit and each shifted on its own, merged as min(a + b, 1). Each pair is a pure
function of (key, example index): training pairs of the run's seed (stream
"multimnist/train"), test pairs of the fixed `streams.TEST_SEED` (stream "multimnist/test"),
so every run is evaluated on the same pairs (`capsjax.streams`).
Only CapsNet trains on it: the loss needs a capsule per class and the shared decoder.
"""

import jax
import jax.numpy as jnp

from capsjax import data, losses, multimnist, streams
from capsjax.archs.base import Losses
from capsjax.datasets.base import Dataset
from capsjax.datasets.mnist import load_mnist


def size(split: str, stored: data.Split) -> int:
  return multimnist.num_examples(len(stored))


def pair_key(seed: int, split: str) -> jax.Array:
  """The key of a split's pairs (`capsjax.streams`): stream "multimnist/train" of the run's seed
  for training, the fixed test stream "multimnist/test" for the test set."""
  if split == "train":
    return streams.stream(seed, "multimnist/train")
  return streams.eval_stream("multimnist")


def examples(config, split: str, stored: data.Split):
  """Pairs of example `index` (of `size`): inputs [B, 36, 36, 1], targets (labels [B, 2],
  digits [B, 2, 36, 36, 1])."""
  pair = multimnist.pairing(stored.labels, stored.num_classes)
  seed_key = pair_key(config.seed, split)

  def fn(key, images, labels, index):
    del key, labels  # the pair is a function of (seed, index) alone
    p = jax.vmap(pair, in_axes=(None, 0, None))(seed_key, index, images)
    return p.image, (p.labels, p.digits)

  return fn


def loss(arch, config):
  """Eq. 4 against the two-hot target + each digit's reconstruction from its own class capsule
  against its own image, x recon_weight (`losses.two_digit_terms`; the true classes decode at
  test time too, so the test loss is the training objective). Correct: the two longest capsules
  are the two classes (`multimnist.both_correct`); `one_correct` is logged beside it."""
  if arch.name != "capsnet":
    raise ValueError(f"dataset 'multimnist' trains the capsnet arch only (its loss decodes each "
                     f"digit from its class capsule), got arch {arch.name!r}.")
  if config.model.get("variant", "paper") != "paper":
    raise ValueError("dataset 'multimnist' has the paper's loss only; got model variant "
                     f"{config.model['variant']!r}, expected 'paper'.")
  recon_weight = config.recon_weight

  def fn(model, images, targets, *, train: bool, key=None) -> Losses:
    del train, key
    labels, digits = targets
    out = model(images, labels[:, 0])
    second = model.decode(out.v, labels[:, 1])
    recons = jnp.stack([out.reconstructions, second], axis=1)
    total, margin, recon = losses.two_digit_terms(out.lengths, labels, recons, digits,
                                                  recon_weight)
    one = multimnist.one_correct(out.lengths, labels).astype(total.dtype)
    return Losses(total, {"margin_loss": margin, "reconstruction_loss": recon,
                          "one_correct": one}, out.lengths,
                  multimnist.both_correct(out.lengths, labels))

  return fn


MULTIMNIST = Dataset(name="multimnist", description="MultiMNIST (§6): two overlapping MNIST "
                     "digits on 36x36, 60M train / 10M test pairs built on the fly",
                     splits=("train", "test"), load=load_mnist, size=size, examples=examples,
                     loss=loss, host_batches=False)
