"""Independent random streams (`capsjax.core.streams`): every use of randomness draws from its own
named stream of the run's seed, so no two uses share a key; a resumed run keeps its seed's
streams (MultiMNIST pairs included)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax import api
from capsjax.core import streams
from capsjax.data import multimnist as multimnist_dataset
from conftest import TINY_MODEL_ARGS, run_cli

STEPS = 64
BATCH = 32


def _bits(key: jax.Array) -> tuple:
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _training_keys(seed: int) -> dict[str, list[tuple]]:
  """Every key a run of `seed` draws in its first STEPS steps, by use, derived the way the
  production code derives them."""
  init = nnx.Rngs(streams.init_rngs_key(seed))  # what model_state.create_model passes the network
  base = streams.run_keys(seed)
  keys = {"init": [_bits(init.params()) for _ in range(16)], "data": [], "shift": [],
          "dropout": [], "multimnist/train": []}
  pairs = multimnist_dataset.pair_key(seed, "train")
  for s in range(STEPS):
    k = streams.at_step(base, s)
    keys["data"].append(_bits(k.data))
    keys["shift"] += [_bits(x) for x in jax.random.split(k.data, BATCH)]  # augment's split
    keys["dropout"].append(_bits(k.dropout))
    keys["multimnist/train"].append(_bits(jax.random.fold_in(pairs, s)))
  return keys


def test_keys_of_every_stream_are_pairwise_distinct():
  """The first steps' keys of every stream of seeds 0 and 1 and the built test sets' first
  examples: no key serves two uses (before: dropout = shift key of image 1, step 0's data key =
  Conv1's init key, test example i = step i of seed 0)."""
  everything = []
  for seed in (0, 1):
    for name, keys in _training_keys(seed).items():
      everything += [(seed, name, k) for k in keys]
  for dataset in ("multimnist", "affnist_style"):
    base = streams.eval_stream(dataset)
    everything += [("test", dataset, _bits(jax.random.fold_in(base, i))) for i in range(STEPS)]
  # The base keys themselves (the test pairs' key is the same whatever the run's seed).
  everything += [("base", name, _bits(streams.stream(0, name))) for name in streams.TRAINING]
  everything.append(("base", "multimnist/test", _bits(multimnist_dataset.pair_key(0, "test"))))
  by_key = {}
  for seed, name, k in everything:
    by_key.setdefault(k, []).append((seed, name))
  shared = {k: uses for k, uses in by_key.items() if len(uses) > 1}
  assert not shared, list(shared.values())[:5]
  # The stream tags themselves differ (a tag is what separates two streams of one seed).
  names = [*streams.TRAINING, "multimnist/train", "multimnist/test", "affnist_style/test"]
  assert len({streams.tag(n) for n in names}) == len(names)


def test_test_sets_do_not_depend_on_the_run_seed():
  assert _bits(multimnist_dataset.pair_key(0, "test")) == _bits(
      multimnist_dataset.pair_key(7, "test"))
  assert _bits(multimnist_dataset.pair_key(0, "train")) != _bits(
      multimnist_dataset.pair_key(7, "train"))


def test_dropout_mask_is_independent_of_the_shifts():
  """The baseline's dropout mask of step s is drawn from the dropout stream alone: it is not
  drawn from any image's shift key, and redrawing the shifts (another data key) leaves it as
  it was."""
  base = streams.run_keys(3)
  dropout = nnx.Dropout(0.5)
  ones = jnp.ones((BATCH, 192))
  for s in range(16):
    k = streams.at_step(base, s)
    shift_keys = {_bits(x) for x in jax.random.split(k.data, BATCH)}
    assert _bits(k.dropout) not in shift_keys and _bits(k.dropout) != _bits(k.data)
    mask = np.asarray(dropout(ones, rngs=k.dropout)) > 0
    other_data = streams.StepKeys(jax.random.fold_in(k.data, 99), k.dropout)
    np.testing.assert_array_equal(np.asarray(dropout(ones, rngs=other_data.dropout)) > 0, mask)
    # ... and the mask of image 1 is not the one its shift key would give (it was, before).
    from_shift = np.asarray(dropout(ones, rngs=jax.random.split(k.data, BATCH)[1])) > 0
    assert not np.array_equal(from_shift, mask)


def test_multimnist_resumed_with_another_seed_equals_the_uninterrupted_run(tmp_path, cli_env):
  """MultiMNIST stopped at step 2 and resumed to step 4 with --seed 7 keeps the run's seed 0
  (its pairs included) and ends bit-identical to the uninterrupted run (before: it said it kept
  seed 0 but trained on seed 7's pairs)."""
  common = ["--config", "multimnist_cpu", "--batch-size", "4", "--train-examples", "200",
            "--test-examples", "24", "--log-every", "1", "--checkpoint-every", "2",
            "--no-progress", *TINY_MODEL_ARGS]
  whole = run_cli("train", *common, "--workdir", str(tmp_path / "a"), "--max-steps", "4",
                  env=cli_env)
  assert whole.returncode == 0, whole.stderr
  first = run_cli("train", *common, "--workdir", str(tmp_path / "b"), "--max-steps", "2",
                  env=cli_env)
  assert first.returncode == 0, first.stderr
  resumed = run_cli("train", *common, "--workdir", str(tmp_path / "b"), "--max-steps", "4",
                    "--seed", "7", env=cli_env)
  assert resumed.returncode == 0, resumed.stderr
  assert "Keeping the run's seed 0 (ignoring seed 7)." in resumed.stdout
  a, b = api.load(tmp_path / "a"), api.load(tmp_path / "b")
  assert a.step == b.step == 4
  for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (whole, resumed))
  timing = ("elapsed_s", "train_seconds")
  assert {k: v for k, v in a.items() if k not in timing} == {
      k: v for k, v in b.items() if k not in timing}
