"""MultiMNIST generation (capsjax/multimnist.py): deterministic in (key, index) across processes,
partners of another class, shifts within +-4 px with nothing clipped, pixels min(a + b, 1)."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax import multimnist
from conftest import REPO

N = 300


def _digits(n: int = N, seed: int = 0):
  """Synthetic 28x28 digits whose four corner pixels are lit, so each bounding box is the whole
  28x28 square and shows exactly where the digit was placed."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  images[:, [0, 0, -1, -1], [0, -1, 0, -1]] = 255
  return images, (np.arange(n) % 10).astype(np.int32)


def _batch(pair, indices, key=jax.random.key(3)):
  return jax.jit(jax.vmap(pair, in_axes=(None, 0)))(key, jnp.asarray(indices, jnp.int32))


def test_pairs_are_a_pure_function_of_key_and_index():
  images, labels = _digits()
  pair = multimnist.make_pairs(images, labels)
  indices = [0, 1, 999, 1000, 123_456, N * 1000 - 1]
  first, again = _batch(pair, indices), _batch(pair, indices[::-1])
  for a, b in zip(first, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[::-1])
  other_key = _batch(pair, indices, jax.random.key(4))
  assert not np.array_equal(first.shifts, other_key.shifts)
  np.testing.assert_array_equal(first.sources[:, 0], np.asarray(indices) // 1000)


def test_pairs_are_the_same_in_another_process():
  """What a resumed run or another host computes: the same pairs for the same (key, index)."""
  script = textwrap.dedent("""
      import json, jax, jax.numpy as jnp, numpy as np
      from capsjax import multimnist
      from test_multimnist import _batch, _digits
      p = _batch(multimnist.make_pairs(*_digits()), [5, 77_777, 299_999])
      print(json.dumps({"image_sum": float(np.asarray(p.image, np.float64).sum()),
                        "sources": np.asarray(p.sources).tolist(),
                        "shifts": np.asarray(p.shifts).tolist()}))
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                        env={"PYTHONPATH": f"{REPO}:{REPO}/tests", "JAX_PLATFORMS": "cpu",
                             "PATH": "/usr/bin:/bin"}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  there = json.loads(proc.stdout.strip().splitlines()[-1])
  here = _batch(multimnist.make_pairs(*_digits()), [5, 77_777, 299_999])
  assert there["sources"] == np.asarray(here.sources).tolist()
  assert there["shifts"] == np.asarray(here.shifts).tolist()
  assert there["image_sum"] == float(np.asarray(here.image, np.float64).sum())


def test_partners_differ_in_class_and_cover_the_other_classes():
  images, labels = _digits()
  p = _batch(multimnist.make_pairs(images, labels), np.arange(0, N * 1000, 37))
  pair_labels, sources = np.asarray(p.labels), np.asarray(p.sources)
  np.testing.assert_array_equal(pair_labels, labels[sources])
  assert (pair_labels[:, 0] != pair_labels[:, 1]).all()
  for c in range(10):  # every other class turns up as a partner of class c
    partners = set(pair_labels[pair_labels[:, 0] == c, 1].tolist())
    assert partners == set(range(10)) - {c}, (c, partners)


def test_shifts_stay_within_4_px_and_nothing_leaves_the_canvas():
  images, labels = _digits()
  p = _batch(multimnist.make_pairs(images, labels), np.arange(0, N * 1000, 101))
  shifts = np.asarray(p.shifts)
  assert shifts.min() == -4 and shifts.max() == 4  # the whole range is used, nothing beyond
  digits, sources = np.asarray(p.digits), np.asarray(p.sources)
  assert digits.shape[2:] == (36, 36, 1)
  for d, s, src in zip(digits.reshape(-1, 36, 36), shifts.reshape(-1, 2), sources.reshape(-1)):
    rows, cols = np.nonzero(d)
    assert (rows.min(), cols.min()) == (4 + s[0], 4 + s[1])  # the corner pixels moved by s
    np.testing.assert_allclose(d[4 + s[0]:32 + s[0], 4 + s[1]:32 + s[1]],
                               images[src, :, :, 0] / 255.0, atol=1e-7)  # whole, unclipped


def test_merged_pixels_are_min_of_the_sum_and_one():
  images, labels = _digits()
  p = _batch(multimnist.make_pairs(images, labels), np.arange(0, 50_000, 997))
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
  images, _ = _digits(20)
  with pytest.raises(ValueError, match="at least two classes, got classes \\[7\\]"):
    multimnist.make_pairs(images, np.full(20, 7, np.int32))


def test_example_counts_are_the_papers():
  assert multimnist.num_examples(60_000) == 60_000_000
  assert multimnist.num_examples(10_000) == 10_000_000


def test_two_hot_and_the_two_digit_loss_on_hand_made_cases():
  from capsjax import losses
  labels = jnp.array([[3, 7], [0, 9]])
  np.testing.assert_array_equal(losses.two_hot(labels, 10)[0],
                                [0, 0, 0, 1, 0, 0, 0, 1, 0, 0])
  # Lengths 0.9 on both true classes and 0.1 elsewhere: no margin loss; the reconstruction of
  # digit 1 misses by 0.5 on 4 pixels (4 * 0.25 = 1), digit 2 is exact.
  lengths = jnp.full((2, 10), 0.1).at[0, jnp.array([3, 7])].set(0.9)
  lengths = lengths.at[1, jnp.array([0, 9])].set(0.9)
  digits = jnp.zeros((2, 2, 6, 6, 1)).at[:, 0, :2, :2].set(1.0)
  recons = digits.at[:, 0, :2, :2].set(0.5)
  assert float(losses.two_digit_loss(lengths, labels, recons, digits)) == pytest.approx(0.0005)
  # One true class at 0.5 instead of 0.9 costs (0.9 - 0.5)^2 = 0.16 in that example.
  worse = lengths.at[0, 7].set(0.5)
  assert float(losses.two_digit_loss(worse, labels, digits, digits)) == pytest.approx(0.16 / 2)


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
  from capsjax.model import CapsNet
  images, labels = _digits(20)
  p = _batch(multimnist.make_pairs(images, labels), [0, 5_000])
  kwargs = {} if vote_chunk_size is None else {"vote_chunk_size": vote_chunk_size}
  model = CapsNet(input_shape=(36, 36, 1), rngs=nnx.Rngs(0), **kwargs)
  assert model.num_primary == 3200 and model.primary_grid == (10, 10, 32)
  out = model(p.image, p.labels[:, 0])
  assert out.lengths.shape == (2, 10) and out.reconstructions.shape == (2, 36, 36, 1)
  assert out.couplings.shape == (2, 3200, 10)
  np.testing.assert_allclose(out.couplings.sum(-1), 1.0, rtol=1e-5)
  reference = CapsNet(input_shape=(36, 36, 1), rngs=nnx.Rngs(0))(p.image, p.labels[:, 0])
  np.testing.assert_allclose(out.v, reference.v, rtol=2e-4, atol=1e-6)
