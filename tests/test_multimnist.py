"""MultiMNIST generation (capsjax/data/multimnist.py), through `pairing`, the function the training
loop runs: the official construction (one placement per base digit, distinct partners of other
classes, each shifted on its own, shifts within +-4 px with nothing clipped, pixels min(a + b,
1)), deterministic in (key, index) across processes, jitted or not. Shifts and sources are read
off the generated pixels."""

import hashlib
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.data import multimnist
from conftest import REPO

N = 300
KEY = jax.random.key(3)


def _digits(n: int = N, seed: int = 0):
  """Synthetic 28x28 digits: random pixels with the four corners lit, so each bounding box is
  the whole 28x28 square and shows where the digit was placed, and the digit's split index
  written into pixels (14, 14) and (14, 15) as index % 256, index // 256, so a placed digit
  names its source. Labels cycle through the 10 classes."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  images[:, [0, 0, -1, -1], [0, -1, 0, -1]] = 255
  images[:, 14, 14, 0] = np.arange(n) % 256
  images[:, 14, 15, 0] = np.arange(n) // 256
  return images, (np.arange(n) % 10).astype(np.int32)


def _batch(images, labels, indices, key=KEY):
  """Pairs of `indices` from `pairing`, vmapped and jitted as in the training step."""
  pair = multimnist.pairing(labels)
  return jax.jit(jax.vmap(pair, in_axes=(None, 0, None)))(
      key, jnp.asarray(indices, jnp.int32), jnp.asarray(images))


def _placement(digits, images):
  """(shifts [..., 2] int, sources [...] int) of placed digits [..., 36, 36, 1] read off their
  pixels, after checking that each canvas holds its source digit whole, unclipped, and nothing
  else."""
  digits = np.asarray(digits)
  flat = np.rint(digits.reshape(-1, 36, 36).astype(np.float64) * 255).astype(np.int64)
  np.testing.assert_allclose(flat / 255.0, digits.reshape(-1, 36, 36), atol=1e-6)
  shifts, sources = [], []
  for d in flat:
    rows, cols = np.nonzero(d)
    dy, dx = rows.min() - 4, cols.min() - 4  # where the lit top-left corner went
    crop = d[4 + dy:32 + dy, 4 + dx:32 + dx]
    source = crop[14, 14] + 256 * crop[14, 15]
    np.testing.assert_array_equal(crop, images[source, :, :, 0])
    assert d.sum() == crop.sum()
    shifts.append((dy, dx))
    sources.append(source)
  lead = digits.shape[:-3]
  return np.array(shifts).reshape(*lead, 2), np.array(sources).reshape(lead)


def test_pairs_are_a_pure_function_of_key_and_index_jitted_or_not():
  images, labels = _digits()
  indices = [0, 1, 999, 1000, 123_456, N * 1000 - 1]
  first, again = _batch(images, labels, indices), _batch(images, labels, indices[::-1])
  for a, b in zip(first, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[::-1])
  pair = multimnist.pairing(labels)
  for row in (0, 3, 5):  # one example at a time, not jitted
    i = indices[row]
    alone = pair(KEY, jnp.int32(i), jnp.asarray(images))
    for a, b in zip(alone, first):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[row])
  _, sources = _placement(first.digits, images)
  np.testing.assert_array_equal(sources[:, 0], np.asarray(indices) // 1000)
  other_key = _batch(images, labels, indices, jax.random.key(4))
  assert not np.array_equal(np.asarray(first.digits), np.asarray(other_key.digits))


def test_pairs_are_the_same_in_another_process():
  """What a resumed run or another host computes: the same pairs for the same (key, index)."""
  script = textwrap.dedent("""
      import hashlib, json
      import numpy as np
      from test_multimnist import _batch, _digits
      p = _batch(*_digits(), [5, 77_777, 299_999])
      print(json.dumps({"digits": hashlib.sha256(np.asarray(p.digits).tobytes()).hexdigest(),
                        "image": hashlib.sha256(np.asarray(p.image).tobytes()).hexdigest(),
                        "labels": np.asarray(p.labels).tolist()}))
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                        env={"PYTHONPATH": f"{REPO}:{REPO}/tests", "JAX_PLATFORMS": "cpu",
                             "PATH": "/usr/bin:/bin"}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  there = json.loads(proc.stdout.strip().splitlines()[-1])
  here = _batch(*_digits(), [5, 77_777, 299_999])
  assert there["labels"] == np.asarray(here.labels).tolist()
  assert there["digits"] == hashlib.sha256(np.asarray(here.digits).tobytes()).hexdigest()
  assert there["image"] == hashlib.sha256(np.asarray(here.image).tobytes()).hexdigest()


def test_one_base_keeps_its_placement_and_has_1000_distinct_partners_of_other_classes():
  """The official generator shifts base digit i once (`random_shifts[i, 0]`) and draws its
  partners without replacement, its own class dropped."""
  images, labels = _digits(1200)  # 1,080 digits of the other classes for each base
  for base in (7, 1130):
    p = _batch(images, labels, base * 1000 + np.arange(1000))
    digits = np.asarray(p.digits)
    assert (digits[:, 0] == digits[0, 0]).all()  # one placement of the base in all its pairs
    shifts, sources = _placement(digits, images)
    assert (sources[:, 0] == base).all() and (shifts[:, 0] == shifts[0, 0]).all()
    partners = sources[:, 1]
    assert len(set(partners.tolist())) == 1000  # pairwise distinct
    assert (labels[partners] != labels[base]).all()
    np.testing.assert_array_equal(np.asarray(p.labels), labels[sources])
    for axis in range(2):  # the partners are shifted on their own, over the whole range
      assert set(shifts[:, 1, axis].tolist()) == set(range(-4, 5))


def test_partners_differ_in_class_and_cover_the_other_classes():
  images, labels = _digits()
  p = _batch(images, labels, np.arange(0, N * 1000, 101))
  pair_labels = np.asarray(p.labels)
  _, sources = _placement(p.digits, images)
  np.testing.assert_array_equal(pair_labels, labels[sources])
  assert (pair_labels[:, 0] != pair_labels[:, 1]).all()
  for c in range(10):  # every other class turns up as a partner of class c
    partners = set(pair_labels[pair_labels[:, 0] == c, 1].tolist())
    assert partners == set(range(10)) - {c}, (c, partners)


def test_base_and_partner_shifts_cover_4_px_on_each_axis_and_nothing_leaves_the_canvas():
  images, labels = _digits()
  indices = np.arange(N) * 1000 + (np.arange(N) * 37) % 1000  # one pair of each base digit
  p = _batch(images, labels, indices)
  assert np.asarray(p.digits).shape[1:] == (2, 36, 36, 1)
  shifts, sources = _placement(p.digits, images)  # also: each digit whole, unclipped
  np.testing.assert_array_equal(sources[:, 0], np.arange(N))
  for who in range(2):  # the base digits' shifts, then their partners'
    for axis in range(2):
      assert set(shifts[:, who, axis].tolist()) == set(range(-4, 5)), (who, axis)


def test_a_split_smaller_than_the_pairs_repeats_partners_only_across_blocks():
  """With 18 digits of other classes per base, pairs 0-17 use each once, pairs 18-35 again,
  each block in its own order."""
  images, labels = _digits(20)
  p = _batch(images, labels, 3000 + np.arange(36))
  _, sources = _placement(p.digits, images)
  others = sorted(np.flatnonzero(labels != labels[3]).tolist())
  first, second = sources[:18, 1].tolist(), sources[18:, 1].tolist()
  assert sorted(first) == others and sorted(second) == others
  assert first != second


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 1000, 54_000])
def test_permute_is_a_permutation_of_every_size(size):
  permute = jax.jit(jax.vmap(multimnist._permute, in_axes=(None, 0, None)))
  for seed in range(2):
    values = np.asarray(permute(jax.random.key(seed), jnp.arange(size, dtype=jnp.int32), size))
    np.testing.assert_array_equal(np.sort(values), np.arange(size))
  if size >= 16:
    other = np.asarray(permute(jax.random.key(9), jnp.arange(size, dtype=jnp.int32), size))
    assert not np.array_equal(values, other)  # another key, another permutation


def test_permute_puts_any_ordered_pair_first_equally_often():
  """Over 40,000 keys, (element 0, element 1) of a permutation of 5 is uniform over the 20
  ordered pairs (chi-square; with 4 or 6 Feistel rounds instead of 10, p < 1e-6)."""
  def first_two(key):
    return jnp.stack([multimnist._permute(key, 0, 5), multimnist._permute(key, 1, 5)])
  v = np.asarray(jax.jit(jax.vmap(first_two))(jax.random.split(jax.random.key(0), 40_000)))
  counts = np.zeros((5, 5))
  np.add.at(counts, (v[:, 0], v[:, 1]), 1)
  assert np.trace(counts) == 0
  off = counts[~np.eye(5, dtype=bool)]
  chi2 = ((off - off.mean()) ** 2 / off.mean()).sum()
  assert chi2 < 43.82, counts  # the 1e-3 upper quantile of chi-square with 19 degrees of freedom


def test_merged_pixels_are_min_of_the_sum_and_one():
  images, labels = _digits()
  p = _batch(images, labels, np.arange(0, 50_000, 997))
  digits, image = np.asarray(p.digits), np.asarray(p.image)
  np.testing.assert_array_equal(image, np.minimum(digits[:, 0] + digits[:, 1], 1.0))
  assert image.max() == 1.0 and (digits.sum(1) > 1).any()  # the clip is exercised
  # The official code's uint8 merge, np.minimum(base + top, 255), gives the same picture.
  as_uint8 = np.rint(digits * 255).astype(np.int32)
  official = np.minimum(as_uint8[:, 0] + as_uint8[:, 1], 255) / 255.0
  np.testing.assert_allclose(image, official, atol=1e-6)


def test_place_centres_and_moves_a_digit():
  digit = jnp.ones((28, 28, 1))
  centred = np.asarray(multimnist.place(digit, jnp.array([0, 0])))
  assert centred.shape == (36, 36, 1) and centred.sum() == 28 * 28
  assert centred[4:32, 4:32].all()
  moved = np.asarray(multimnist.place(digit, jnp.array([-4, 3])))
  assert moved[0:28, 7:35].all() and moved.sum() == 28 * 28


def test_one_class_only_is_refused():
  with pytest.raises(ValueError, match="at least two classes, got classes \\[7\\]"):
    multimnist.pairing(np.full(20, 7, np.int32))


def test_example_counts_are_the_papers():
  assert multimnist.num_examples(60_000) == 60_000_000
  assert multimnist.num_examples(10_000) == 10_000_000


def test_two_hot_and_the_two_digit_loss_on_hand_made_cases():
  from capsjax.nn import losses
  labels = jnp.array([[3, 7], [0, 9]])
  np.testing.assert_array_equal(losses.two_hot(labels, 10)[0],
                                [0, 0, 0, 1, 0, 0, 0, 1, 0, 0])
  # Lengths 0.9 on both true classes and 0.1 elsewhere: no margin loss; the reconstruction of
  # digit 1 misses by 0.5 on 4 pixels (4 * 0.25 = 1), digit 2 is exact.
  lengths = jnp.full((2, 10), 0.1).at[0, jnp.array([3, 7])].set(0.9)
  lengths = lengths.at[1, jnp.array([0, 9])].set(0.9)
  digits = jnp.zeros((2, 2, 6, 6, 1)).at[:, 0, :2, :2].set(1.0)
  recons = digits.at[:, 0, :2, :2].set(0.5)
  total = lambda l, r, d: float(jnp.mean(losses.two_digit_terms(l, labels, r, d)[0]))
  assert total(lengths, recons, digits) == pytest.approx(0.0005)
  # One true class at 0.5 instead of 0.9 costs (0.9 - 0.5)^2 = 0.16 in that example.
  worse = lengths.at[0, 7].set(0.5)
  assert total(worse, digits, digits) == pytest.approx(0.16 / 2)


def test_both_correct_needs_exactly_the_two_classes():
  labels = jnp.array([[3, 7], [3, 7], [3, 7], [2, 5]])
  lengths = jnp.full((4, 10), 0.1)
  lengths = lengths.at[0, 7].set(0.9).at[0, 3].set(0.8)  # both right, in either order
  lengths = lengths.at[1, 3].set(0.9).at[1, 4].set(0.8)  # one right
  lengths = lengths.at[2, 0].set(0.9).at[2, 1].set(0.8)  # none right
  lengths = lengths.at[3, 5].set(0.9).at[3, 2].set(0.85)
  np.testing.assert_array_equal(multimnist.both_correct(lengths, labels),
                                [True, False, False, True])
  np.testing.assert_array_equal(multimnist.one_correct(lengths, labels),
                                [True, True, False, True])


@pytest.mark.parametrize("vote_chunk_size", [None, 800])
def test_capsnet_takes_the_36x36_canvas_with_3200_primary_capsules(vote_chunk_size):
  """The paper's network on MultiMNIST's canvas: 10x10x32 primary capsules, with the plain and
  the memory-efficient (chunked) votes giving the same capsules."""
  from flax import nnx
  from capsjax.nn.model import CapsNet
  images, labels = _digits(20)
  p = _batch(images, labels, [0, 5_000])
  kwargs = {} if vote_chunk_size is None else {"vote_chunk_size": vote_chunk_size}
  model = CapsNet(input_shape=(36, 36, 1), rngs=nnx.Rngs(0), **kwargs)
  assert model.num_primary == 3200 and model.primary_grid == (10, 10, 32)
  out = model(p.image, p.labels[:, 0])
  assert out.lengths.shape == (2, 10) and out.reconstructions.shape == (2, 36, 36, 1)
  assert out.couplings.shape == (2, 3200, 10)
  np.testing.assert_allclose(out.couplings.sum(-1), 1.0, rtol=1e-5)
  reference = CapsNet(input_shape=(36, 36, 1), rngs=nnx.Rngs(0))(p.image, p.labels[:, 0])
  np.testing.assert_allclose(out.v, reference.v, rtol=2e-4, atol=1e-6)
