"""MultiMNIST (the paper's §6), generated on the fly: pure JAX functions of (key, example index).

The construction follows the official generator, `shift_write_multi_mnist` in Sarasra/models
research/capsules/input_data/mnist/mnist_shift.py (run with `--pad=4 --num_pairs=1000`):

- each 28x28 digit is padded to a 36x36 canvas and moved by an integer (dy, dx) (zeros fill in,
  nothing wraps around, as `shift_2d`);
- example i belongs to base digit b = i // pairs_per_image, as its pair j = i % pairs_per_image;
  the base digit is shifted once (`random_shifts[b, 0]`) and that same placement is in all of its
  pairs;
- its partners are digits of the other classes from the same split, distinct from each other
  (the official `np.random.choice(..., replace=False)` with the base's class dropped), partner j
  shifted on its own (`random_shifts[b, j + 1]`);
- the two are merged as min(a + b, 1), the official `np.minimum(base + top, 255)` on uint8
  divided by 255; the labels are (base's class, partner's class), the official label_1, label_2;
- 1,000 pairs per digit: 60M training and 10M test examples.

What differs:
- the random numbers. Shifts are drawn from JAX keys (the base shift from (key, b), partner j's
  from (key, i)), and partner j is element j of a keyed pseudo-random permutation of the other
  classes' digits (`_permute`: a Feistel network with cycle-walking, keyed by (key, b)), not
  numpy's global `choice`; so which digits pair up and how they are shifted differ from the
  official files, while the rules above are the same;
- the shift range: up to the paper's 4 px; the official README's command says `--shift=6
  --pad=4`, which cuts off whatever moves past the 36x36 edge; here nothing is cut off;
- the pair count: every digit gets exactly pairs_per_image pairs. The official code keeps the
  other-class digits among 2 x num_pairs drawn, so it writes fewer when fewer than num_pairs of
  them are of other classes, and raises for a split of under 2 x num_pairs digits. Where a digit
  has fewer other-class digits M than pairs_per_image (tiny splits, as in tests), pairs j < M
  have distinct partners and each further block of M pairs is a fresh permutation, so partners
  repeat across blocks.

Nothing is stored: the same (key, i) gives the same pair in any process, on any backend, after
any resume.

`pairing(labels)` returns `pair(key, index, images) -> Pair` for one example; `jax.vmap` it over
a batch of indices (inside the compiled step, like the other augmentations).

`MULTIMNIST` is the dataset record (`capsjax.data.dataset.Dataset`) built on the generator: pairs
of the stored MNIST digits, training pairs from stream "multimnist/train" of the run's seed, test
pairs from the fixed stream "multimnist/test" (`capsjax.core.streams`), so every run is evaluated
on the same pairs. Only CapsNet trains on it: the loss needs a capsule per class and the shared
decoder.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capsjax.core import streams
from capsjax.data import storage
from capsjax.data.dataset import Dataset
from capsjax.data.mnist import load_mnist
from capsjax.nn import losses
from capsjax.nn.inputs import to_float
from capsjax.nn.objective import Losses

CANVAS = 36
MAX_SHIFT = 4
PAIRS_PER_IMAGE = 1000
# Rounds of the Feistel network, each updating both halves. With 4 or 6, (element 0, element 1)
# of a permutation of 5, 6 or 7 elements is far from uniform (chi-square over 200,000 keys,
# p < 1e-3); with 10, p > 0.5 for every size tried (3, 5, 6, 7, 9, 10, 13, 17).
_FEISTEL_ROUNDS = 10
# fold_in tags that keep the three kinds of draws of one key apart
_BASE_SHIFT, _PARTNER_ORDER, _PARTNER_SHIFT = 0, 1, 2


class Pair(NamedTuple):
  """One MultiMNIST example (float32 in [0, 1]).

  Attributes:
    image: [36, 36, C] the merged pair, min(base + partner, 1).
    digits: [2, 36, 36, C] each shifted digit alone (the reconstruction targets).
    labels: [2] int32, the base digit's class, then its partner's (always different).
  """

  image: jnp.ndarray  # [36, 36, C]: min(base + partner, 1)
  digits: jnp.ndarray  # [2, 36, 36, C]: each shifted digit alone (the reconstruction targets)
  labels: jnp.ndarray  # [2] int32: the base digit's class, then its partner's (always different)


def place(digit: jnp.ndarray, shift: jnp.ndarray, canvas: int = CANVAS) -> jnp.ndarray:
  """A [H, W, C] digit centred on a [canvas, canvas, C] zero canvas, moved by shift = (dy, dx)
  pixels (|dy|, |dx| <= (canvas - H) / 2, so nothing leaves the canvas)."""
  h, w, c = digit.shape
  margin = (canvas - h) // 2
  padded = jnp.pad(digit, ((2 * margin, 2 * margin), (2 * margin, 2 * margin), (0, 0)))
  return jax.lax.dynamic_slice(padded, (margin - shift[0], margin - shift[1], 0),
                               (canvas, canvas, c))


def num_examples(split_size: int, pairs_per_image: int = PAIRS_PER_IMAGE) -> int:
  """How many pairs a split of `split_size` digits yields."""
  return split_size * pairs_per_image


def _mix32(h: jnp.ndarray) -> jnp.ndarray:
  """MurmurHash3's 32-bit finaliser (fmix32): a bijection of uint32 where every input bit flips
  about half of the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _permute(key: jax.Array, x: jnp.ndarray, size: jnp.ndarray) -> jnp.ndarray:
  """Element x of a keyed pseudo-random permutation of [0, size): int32 x in [0, size), size
  >= 1 (both may be traced). Each key gives one permutation, so distinct x give distinct values.

  A Feistel network on the t = ceil(log2 size) bits of [0, 2^t) (t >= 1), split into a low
  half of t - t // 2 bits and a high half of t // 2 bits; each of `_FEISTEL_ROUNDS` rounds
  XORs the high half with fmix32(low ^ k) and then the low half with fmix32(high ^ k') (round
  keys k, k' from `key`), each step invertible, so the whole is a bijection of [0, 2^t).
  Cycle-walking (re-encrypting until the value is below size) restricts it to [0, size): as 2^t
  <= 2 size, each pass lands out of range with probability at most 1/2. Cost: O(1) uint32
  operations per pass, never a sort of [0, size).
  """
  size = jnp.asarray(size, jnp.uint32)
  bits = jnp.uint32(32) - jax.lax.clz(jnp.maximum(size, 2) - 1)  # ceil(log2 size), >= 1
  high_bits = bits // 2
  low_bits = bits - high_bits
  low_mask = (jnp.uint32(1) << low_bits) - 1
  high_mask = (jnp.uint32(1) << high_bits) - 1
  round_keys = jax.random.bits(key, (2 * _FEISTEL_ROUNDS,), jnp.uint32)

  def encrypt(v):
    low, high = v & low_mask, v >> low_bits
    for r in range(_FEISTEL_ROUNDS):
      high = high ^ (_mix32(low ^ round_keys[2 * r]) & high_mask)
      low = low ^ (_mix32(high ^ round_keys[2 * r + 1]) & low_mask)
    return (high << low_bits) | low

  first = encrypt(jnp.asarray(x, jnp.uint32))
  return jax.lax.while_loop(lambda v: v >= size, encrypt, first).astype(jnp.int32)


def _base_shift(key: jax.Array, base: jnp.ndarray, max_shift: int) -> jnp.ndarray:
  """[2] int32 (dy, dx) of base digit `base`, uniform in [-max_shift, max_shift]: one per digit,
  shared by all its pairs (the official `random_shifts[i, 0]`)."""
  k = jax.random.fold_in(jax.random.fold_in(key, _BASE_SHIFT), base)
  return jax.random.randint(k, (2,), -max_shift, max_shift + 1)


def _partner_shift(key: jax.Array, index: jnp.ndarray, max_shift: int) -> jnp.ndarray:
  """[2] int32 (dy, dx) of example `index`'s partner, uniform in [-max_shift, max_shift] (the
  official `random_shifts[i, j + 1]`)."""
  k = jax.random.fold_in(jax.random.fold_in(key, _PARTNER_SHIFT), index)
  return jax.random.randint(k, (2,), -max_shift, max_shift + 1)


def _other_class_rank(key: jax.Array, base: jnp.ndarray, j: jnp.ndarray,
                      num_others: jnp.ndarray) -> jnp.ndarray:
  """int32 in [0, num_others): which of the `num_others` digits of the other classes is partner
  j of base digit `base`. Element j % num_others of a permutation keyed by (key, base,
  j // num_others), so j < num_others give distinct partners; each further block of num_others
  pairs (tiny splits only) is a fresh permutation."""
  k = jax.random.fold_in(jax.random.fold_in(key, _PARTNER_ORDER), base)
  return _permute(jax.random.fold_in(k, j // num_others), j % num_others, num_others)


def pairing(labels: np.ndarray, num_classes: int = 10, pairs_per_image: int = PAIRS_PER_IMAGE,
            max_shift: int = MAX_SHIFT) -> Callable[[jax.Array, jnp.ndarray, jnp.ndarray], Pair]:
  """`pair(key, index, images) -> Pair` over a split with class `labels` [N] int in [0,
  num_classes); `images` [N, H, W, C] uint8 is an argument, so the split can live on the device
  as the step's input. `index` is an int32 scalar in [0, N * pairs_per_image); the canvas is H +
  2 max_shift square.

  Example `index` pairs base digit b = index // pairs_per_image, placed at `_base_shift(key, b)`
  in all its pairs, with partner j = index % pairs_per_image: the r-th digit not of b's class c,
  r = `_other_class_rank(key, b, j, N - count[c])`, so the partners of one base are distinct
  while j < N - count[c]. With the split's indices sorted by class, the r-th digit not of class c
  is `by_class[r]` if r < start[c], else `by_class[r + count[c]]`.

  Args:
    labels: [N] int class of each stored digit, in [0, num_classes).
    num_classes: the class count K.
    pairs_per_image: pairs per base digit (the paper's 1,000).
    max_shift: largest shift of each digit in pixels along each axis (the paper's 4).

  Returns:
    `pair(key, index, images) -> Pair`, pure, for `jax.vmap` over a batch of indices.

  Raises:
    ValueError: fewer than two classes are present in `labels`.
  """
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  if np.count_nonzero(counts) < 2:
    raise ValueError(f"MultiMNIST needs digits of at least two classes, got classes "
                     f"{sorted(set(labels.tolist()))}.")
  by_class = jnp.asarray(np.argsort(labels, kind="stable").astype(np.int32))
  start = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32))
  counts_j = jnp.asarray(counts.astype(np.int32))
  labels_j = jnp.asarray(labels.astype(np.int32))
  n = len(labels)

  def pair(key: jax.Array, index: jnp.ndarray, images: jnp.ndarray) -> Pair:
    images = jnp.asarray(images)
    canvas = images.shape[1] + 2 * max_shift
    index = jnp.asarray(index, jnp.int32)
    base, j = index // pairs_per_image, index % pairs_per_image
    c = labels_j[base]
    r = _other_class_rank(key, base, j, n - counts_j[c])
    partner = by_class[jnp.where(r < start[c], r, r + counts_j[c])]
    sources = jnp.stack([base, partner])
    shifts = jnp.stack([_base_shift(key, base, max_shift),
                        _partner_shift(key, index, max_shift)])
    digits = jax.vmap(lambda i, s: place(to_float(images[i]), s, canvas))(sources, shifts)
    return Pair(jnp.minimum(digits[0] + digits[1], 1.0), digits, labels_j[sources])

  return pair


def both_correct(lengths: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """[B] bool: the two longest capsules are exactly the example's two classes (the official
  rule, and the paper's error of 5.2% counts examples where this fails)."""
  top2 = jax.lax.top_k(lengths, 2)[1]
  return jnp.all(jnp.sort(top2, axis=-1) == jnp.sort(labels, axis=-1), axis=-1)


def one_correct(lengths: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """[B] bool: at least one of the two longest capsules is one of the example's classes."""
  top2 = jax.lax.top_k(lengths, 2)[1]
  return jnp.any(top2[:, :, None] == labels[:, None, :], axis=(-2, -1))


# The dataset record.

def size(split: str, stored: storage.Split) -> int:
  """The `Dataset.size` of MultiMNIST: PAIRS_PER_IMAGE = 1,000 pairs per stored digit (60M
  training, 10M test pairs on MNIST), whatever the split."""
  return num_examples(len(stored))


def pair_key(seed: int, split: str) -> jax.Array:
  """The key of a split's pairs (`capsjax.core.streams`): stream "multimnist/train" of the
  run's seed for training, the fixed test stream "multimnist/test" for the test set."""
  if split == "train":
    return streams.stream(seed, "multimnist/train")
  return streams.eval_stream("multimnist")


def builder(config, split: str, stored: storage.Split):
  """The `Dataset.builder` of MultiMNIST: the pairs of examples `index` [B] (of `size`), from
  `pair_key(config.seed, split)` alone (the step's key is not used): inputs [B, 36, 36, 1],
  targets (labels [B, 2], digits [B, 2, 36, 36, 1]).

  Raises:
    ValueError: `stored` holds digits of fewer than two classes (`pairing`).
  """
  pair = pairing(stored.labels, stored.num_classes)
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
  are the two classes (`both_correct`); `one_correct` is logged beside it.

  Raises:
    ValueError: (one line) an arch other than capsnet, or a model variant other than "paper".
  """
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
    one = one_correct(out.lengths, labels).astype(total.dtype)
    return Losses(total, {"margin_loss": margin, "reconstruction_loss": recon,
                          "one_correct": one}, out.lengths,
                  both_correct(out.lengths, labels))

  return fn


MULTIMNIST = Dataset(name="multimnist", description="MultiMNIST (§6): two overlapping MNIST "
                     "digits on 36x36, 60M train / 10M test pairs built on the fly",
                     splits=("train", "test"), load=load_mnist, size=size, builder=builder,
                     loss=loss, host_batches=False)
