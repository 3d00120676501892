"""Efficient-CapsNet (Mazzia et al. 2021): the network's parameter count and batch norm, its
shapes and bad input, the official MNIST augmentation in JAX, and the `capsjax` command's run of
the `efficient_mnist_cpu` preset (train, eval from the checkpoint, dynamic routing, bad flags)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax import cli
from capsjax.data import augment
from capsjax.data.augment import efficient_mnist as aug
from capsjax.nn.efficient import EfficientCapsNet
from capsjax.nn.model import count_params
from capsjax.train import archs, model_state
from capsjax.train.config import TrainConfig
from conftest import assert_finite, records, run_cli

OFFICIAL_PARAMS = 161_824  # the paper's and the official code's count, without the decoder
BATCH_NORM_CHANNELS = 32 + 64 + 64 + 128  # the four convolutions' outputs


def _batch_stats(model) -> list[np.ndarray]:
  """The batch norms' running means and variances, copied to NumPy."""
  return [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


@pytest.fixture(scope="module")
def model() -> EfficientCapsNet:
  """The official MNIST network with its decoder (not trained; only read by the tests)."""
  return EfficientCapsNet(rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images() -> jnp.ndarray:
  return jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))


# --- 1. Parameter count ----------------------------------------------------------------------


def test_parameter_count_is_the_official_one(model):
  """161,824 parameters without the decoder (the paper's count), 1,573,168 with it."""
  total = count_params(model)
  assert total == 1_573_168
  assert total - count_params(model.decoder) == OFFICIAL_PARAMS


def test_without_decoder_the_count_is_the_official_one():
  """reconstruction=False builds no decoder at all: exactly the official 161,824."""
  bare = EfficientCapsNet(reconstruction=False, rngs=nnx.Rngs(0))
  assert bare.decoder is None
  assert count_params(bare) == OFFICIAL_PARAMS


def test_batch_norm_statistics_are_state_not_parameters(model):
  """The running means and variances (2 x 288 = 576 numbers) are nnx.BatchStat, outside
  count_params: Params plus BatchStats are all the model's arrays."""
  stats = _batch_stats(model)
  assert sum(s.size for s in stats) == 2 * BATCH_NORM_CHANNELS == 576
  everything = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat)))
  assert everything == count_params(model) + 576


def test_dynamic_routing_has_no_log_prior():
  """Dynamic routing replaces self-attention and has no log prior (160 numbers fewer)."""
  dyn = EfficientCapsNet(routing="dynamic", routing_iters=3, reconstruction=False,
                         rngs=nnx.Rngs(0))
  assert count_params(dyn) == 161_664 == OFFICIAL_PARAMS - 16 * 10


# --- 2. Batch norm follows train / eval -----------------------------------------------------


def test_eval_output_does_not_depend_on_the_batch_but_train_output_does():
  """Eval mode (the default) normalises by running statistics: example 0 scores the same in two
  different batches. Train mode normalises by the batch's statistics: it does not."""
  net = EfficientCapsNet(reconstruction=False, rngs=nnx.Rngs(0))
  a = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  b = jnp.concatenate([a[:1], jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))])
  np.testing.assert_allclose(net(a).lengths[0], net(b).lengths[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(net(a, train=False).lengths[0], net(b).lengths[0],
                             rtol=1e-5, atol=1e-6)
  train_a, train_b = net(a, train=True).lengths[0], net(b, train=True).lengths[0]
  assert not np.allclose(train_a, train_b, rtol=1e-5, atol=1e-6)


def test_running_statistics_change_in_train_mode_only():
  """An eval-mode call leaves the running statistics as they were; a train-mode call moves
  them (momentum 0.99 towards the batch's)."""
  net = EfficientCapsNet(reconstruction=False, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
  initial = _batch_stats(net)
  net(x)
  for before, after in zip(initial, _batch_stats(net)):
    np.testing.assert_array_equal(before, after)
  net(x, train=True)
  changed = [not np.array_equal(b, a) for b, a in zip(initial, _batch_stats(net))]
  assert all(changed), changed


# --- 3. Shapes ------------------------------------------------------------------------------


def test_output_shapes(model, images):
  """Scores [B,10], capsules [B,10,16], reconstructions [B,28,28,1] in [0,1], couplings
  [B,16,10]."""
  out = model(images)
  assert out.lengths.shape == (3, 10)
  assert out.v.shape == (3, 10, 16)
  assert out.reconstructions.shape == (3, 28, 28, 1)
  assert out.couplings.shape == (3, 16, 10)
  assert float(out.reconstructions.min()) >= 0 and float(out.reconstructions.max()) <= 1
  assert np.all(np.isfinite(out.lengths)) and np.all(np.isfinite(out.v))


def test_labels_choose_the_decoded_capsule(model, images):
  """With labels the decoder reconstructs from the true class's capsule (`decode`), without
  them from the longest one."""
  labels = jnp.array([3, 7, 1])
  out = model(images, labels)
  np.testing.assert_allclose(out.reconstructions, model.decode(out.v, labels), atol=1e-6)
  plain = model(images)
  np.testing.assert_allclose(plain.reconstructions,
                             model.decode(plain.v, jnp.argmax(plain.lengths, -1)), atol=1e-6)


def test_without_decoder_no_reconstructions():
  """reconstruction=False: reconstructions None, and decode raises ValueError."""
  bare = EfficientCapsNet(reconstruction=False, rngs=nnx.Rngs(0))
  out = bare(jnp.zeros((2, 28, 28, 1)))
  assert out.reconstructions is None and out.lengths.shape == (2, 10)
  with pytest.raises(ValueError, match="without its decoder"):
    bare.decode(out.v, jnp.array([0, 1]))


def test_arch_loss_is_margin_plus_weighted_reconstruction(images):
  """The trainable arch's loss per example: margin + recon_weight x summed squared error, in
  train mode (batch statistics) and eval mode alike."""
  config = TrainConfig(arch="efficient_capsnet", routing="self_attention", routing_iters=1)
  net = archs.get("efficient_capsnet").create(
      {"arch": "efficient_capsnet", "input_shape": [28, 28, 1], "num_classes": 10}, config,
      nnx.Rngs(0))
  loss_fn = archs.get("efficient_capsnet").loss(config)
  labels = jnp.array([0, 5, 9])
  for train in (False, True):
    losses = loss_fn(net, images, labels, train=train)
    assert losses.total.shape == (3,) and losses.scores.shape == (3, 10)
    np.testing.assert_allclose(losses.total, losses.terms["margin_loss"] + config.recon_weight
                               * losses.terms["reconstruction_loss"], rtol=1e-6)


# --- 4. Bad input ---------------------------------------------------------------------------


def test_too_small_input_names_the_smallest_size():
  """An input too small for the convolutions and the 9x9 depthwise kernel: the message names
  the smallest side that works (27x27), and that size does build."""
  with pytest.raises(ValueError, match="the smallest that works is 27x27"):
    EfficientCapsNet(input_shape=(20, 20, 1), reconstruction=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="27x27"):
    EfficientCapsNet(input_shape=(26, 26, 1), reconstruction=False, rngs=nnx.Rngs(0))
  EfficientCapsNet(input_shape=(27, 27, 1), reconstruction=False, rngs=nnx.Rngs(0))


def test_depthwise_output_that_does_not_split_into_capsules():
  """36x36 input: a 5x5x128 depthwise output (3200 values) is not 16 capsules of 8."""
  with pytest.raises(ValueError, match="3200 values, which do not make 16 capsules of 8"):
    EfficientCapsNet(input_shape=(36, 36, 1), reconstruction=False, rngs=nnx.Rngs(0))


def test_config_refuses_vote_chunks_for_efficient_capsnet():
  """vote_chunk_size is CapsNet's; the efficient arch has no chunked votes."""
  with pytest.raises(ValueError, match="vote_chunk_size is a setting of arch 'capsnet'"):
    TrainConfig(arch="efficient_capsnet", vote_chunk_size=8, max_steps=1).validate()


def test_config_refuses_augmentation_for_multimnist():
  """MultiMNIST builds its own training examples: no augmentation to choose."""
  with pytest.raises(ValueError, match="takes no augmentation setting"):
    TrainConfig(dataset="multimnist", augmentation="efficient_capsnet", max_steps=1).validate()


def test_unknown_augmentation_names_the_choices():
  """An unregistered name is refused by the registry and by the config, naming the choices."""
  choices = "expected one of shift, efficient_capsnet, cifar10, smallnorb, none"
  with pytest.raises(ValueError, match=f"unknown augmentation 'flip'; {choices}"):
    augment.check("flip")
  with pytest.raises(ValueError, match=f"unknown augmentation 'flip'; {choices}"):
    TrainConfig(augmentation="flip", max_steps=1).validate()


def test_registry_gives_the_efficient_transform():
  """`--augmentation efficient_capsnet` selects `efficient_mnist.transform`; the presets use
  it and a valid config of them validates."""
  assert "efficient_capsnet" in augment.available()
  assert "Efficient-CapsNet" in augment.describe("efficient_capsnet")
  config = TrainConfig(arch="efficient_capsnet", routing="self_attention", routing_iters=1,
                       augmentation="efficient_capsnet", max_shift=0, max_steps=1)
  config.validate()
  assert augment.training_transform(config) is aug.transform


# --- 5. Augmentation ------------------------------------------------------------------------

KEYS = jax.random.split(jax.random.key(0), 200)


def _digit(rows: slice, cols: slice) -> jnp.ndarray:
  """A digit-like [28, 28] image: a '7'-shaped stroke (1.0) with a softer edge (0.5); all
  values are exact binary fractions, so sums of any order are exact."""
  x = np.zeros((28, 28), np.float32)
  block = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.float32)
  block[:2, :] = 1.0  # the bar
  block[:, -2] = 1.0  # the stem
  block[:, -1] = 0.5
  x[rows, cols] = block
  return jnp.asarray(x)


def _bbox(image: np.ndarray) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) rows and columns of the non-zero pixels, inclusive."""
  rows = np.nonzero(np.abs(image).sum(1))[0]
  cols = np.nonzero(np.abs(image).sum(0))[0]
  return rows[0], rows[-1], cols[0], cols[-1]


def test_augment_image_shape_dtype_and_determinism():
  """[28,28,1] float32 out; the same key gives the same image, another key another one."""
  image = _digit(slice(6, 20), slice(8, 18))[..., None]
  out = aug.augment_image(jax.random.key(0), image)
  assert out.shape == (28, 28, 1) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, aug.augment_image(jax.random.key(0), image))
  assert not np.array_equal(out, aug.augment_image(jax.random.key(1), image))
  half = aug.augment_image(jax.random.key(0), image.astype(jnp.float16))
  assert half.dtype == jnp.float32  # any float input comes back float32


@pytest.mark.parametrize("where", ["inside", "touching left and bottom"])
def test_shift_keeps_all_ink_and_never_wraps(where):
  """Over 200 keys: the ink's sum is exactly kept, the result is the image translated (bounding
  box of the same size, contents equal to the translated original), and the translation stays
  within the digit's margins, so nothing wraps around; it does shift both ways along both
  axes where there is room."""
  rows, cols = ((slice(5, 17), slice(9, 19)) if where == "inside" else
                (slice(18, 28), slice(0, 8)))
  image = _digit(rows, cols)
  top, bottom, left, right = _bbox(np.asarray(image))
  out = np.asarray(jax.jit(jax.vmap(aug.shift_within_margins, in_axes=(0, None)))(KEYS, image))
  total = float(image.sum())
  seen = set()
  for shifted in out:
    assert float(shifted.sum()) == total
    t, b, l, r = _bbox(shifted)
    dy, dx = t - top, l - left
    assert (b - t, r - l) == (bottom - top, right - left)  # a wrap would split the digit
    assert -top <= dy <= 27 - bottom and -left <= dx <= 27 - right
    np.testing.assert_array_equal(shifted, np.roll(np.asarray(image), (dy, dx), axis=(0, 1)))
    seen.add((np.sign(dy), np.sign(dx)))
  if where == "inside":
    assert {s for s, _ in seen} == {-1, 0, 1} and {s for _, s in seen} == {-1, 0, 1}
  else:  # no margin on the left nor below: never shifted there
    assert {s for s, _ in seen} <= {-1, 0} and {s for _, s in seen} <= {0, 1}
    assert (-1, 1) in seen


def test_erase_zeroes_one_4x4_block_with_corner_in_4_to_22():
  """Over 200 keys on an all-ones image: exactly 16 zeros forming one 4x4 block whose corner
  lies in [4, 22] along both axes; every other pixel unchanged; the corners vary."""
  ones = jnp.ones((28, 28))
  out = np.asarray(jax.jit(jax.vmap(aug.erase, in_axes=(0, None)))(KEYS, ones))
  corners = []
  for erased in out:
    zeros = np.argwhere(erased == 0)
    assert len(zeros) == 16
    (r0, c0), (r1, c1) = zeros.min(0), zeros.max(0)
    assert (r1 - r0, c1 - c0) == (3, 3)
    assert 4 <= r0 <= 22 and 4 <= c0 <= 22
    assert np.all(erased[erased != 0] == 1)
    corners.append((r0, c0))
  corners = np.array(corners)
  assert corners.min() <= 6 and corners.max() >= 20  # the whole range is used


def test_rotate_leaves_about_half_unchanged_and_keeps_mass():
  """With probability 1/2 (plus the draws that truncate to 0 degrees) the image is returned
  as it is: 70..130 of 200 keys. A centred round blob keeps its mass when rotated."""
  image = _digit(slice(6, 20), slice(8, 18))
  out = np.asarray(jax.jit(jax.vmap(aug.rotate, in_axes=(0, None)))(KEYS, image))
  unchanged = sum(np.array_equal(r, np.asarray(image)) for r in out)
  assert 70 <= unchanged <= 130, unchanged
  # Some rotations are real ones (mass moved off the original pixels).
  assert sum(not np.array_equal(r, np.asarray(image)) for r in out) >= 70
  yy, xx = np.mgrid[0:28, 0:28]
  blob = jnp.asarray(np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / (2 * 3.0 ** 2)), jnp.float32)
  rotated = np.asarray(jax.jit(jax.vmap(aug.rotate, in_axes=(0, None)))(KEYS[:20], blob))
  np.testing.assert_allclose(rotated.sum(axis=(1, 2)), float(blob.sum()), rtol=1e-3)


def test_squish_keeps_height_and_narrows_the_ink():
  """The squish is horizontal only: the same rows hold ink (rows outside stay ~0); the ink is no
  wider (columns above half intensity) and its horizontal spread strictly shrinks."""
  x = np.zeros((28, 28), np.float32)
  x[6:22, 6:22] = 1.0
  image = jnp.asarray(x)
  out = np.asarray(jax.jit(jax.vmap(aug.squish, in_axes=(0, None)))(KEYS[:20], image))
  cols = np.arange(28)

  def spread(profile):
    weights = profile / profile.sum()
    mean = (weights * cols).sum()
    return (weights * (cols - mean) ** 2).sum()

  for squished in out:
    assert squished.shape == (28, 28)
    ink_rows = np.nonzero(np.abs(squished).max(1) > 0.5)[0]
    np.testing.assert_array_equal(ink_rows, np.arange(6, 22))
    assert np.abs(squished[:6]).max() < 1e-5 and np.abs(squished[22:]).max() < 1e-5
    assert (squished.max(0) > 0.5).sum() <= 16
    assert spread(squished.sum(0)) < spread(x.sum(0))


def test_transform_runs_jitted_on_a_batch_and_keeps_labels():
  """The training Transform: [B,28,28,1] in and out under jax.jit, one key per image (two
  equal images come out different), labels unchanged."""
  digit = _digit(slice(6, 20), slice(8, 18))[..., None]
  batch = jnp.stack([digit, digit, jnp.zeros_like(digit)])
  labels = jnp.array([7, 7, 0])
  out, out_labels = jax.jit(aug.transform)(jax.random.key(5), batch, labels)
  assert out.shape == (3, 28, 28, 1) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out_labels, labels)
  assert not np.array_equal(out[0], out[1])
  assert np.all(np.isfinite(out)) and np.abs(np.asarray(out[2])).max() == 0  # empty stays empty


def test_multi_channel_image_is_refused():
  """The official pipeline is MNIST's: a 3-channel image raises ValueError."""
  with pytest.raises(ValueError, match=r"single-channel images \[H, W, 1\], got shape"):
    aug.augment_image(jax.random.key(0), jnp.zeros((28, 28, 3)))


# --- 6, 7. The `capsjax` command --------------------------------------------------------------

RUN = ["train", "--config", "efficient_mnist_cpu", "--max-steps", "6", "--log-every", "3",
       "--batch-size", "8", "--train-examples", "64", "--test-examples", "32", "--no-progress"]


def test_cli_trains_and_eval_restores_the_batch_norm_statistics(tmp_path, data_dir, cli_env):
  """`capsjax train --config efficient_mnist_cpu` runs 6 steps with finite losses (margin +
  0.0005 x reconstruction); `capsjax eval` of its checkpoint reproduces the run's final test
  figures, and the checkpoint holds trained (not initial) running statistics, so the batch
  norms' state is saved and restored."""
  workdir = tmp_path / "run"
  proc = run_cli(*RUN, "--workdir", str(workdir), "--data-dir", data_dir, env=cli_env)
  assert proc.returncode == 0, proc.stderr
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["config"]["arch"] == "efficient_capsnet"
  assert stored["config"]["augmentation"] == "efficient_capsnet"
  assert stored["model"]["routing"] == "self_attention"
  train = records(workdir, "train")
  test, = records(workdir, "test")
  assert [r["step"] for r in train] == [3, 6] and test["step"] == 6
  for record in (*train, test):
    assert_finite(record)
  for record in train:
    assert record["loss"] == pytest.approx(record["margin_loss"]
                                           + 0.0005 * record["reconstruction_loss"], rel=1e-5)
  assert "test_reconstruction_loss" in test and test["test_examples"] == 32

  graphdef, state, _ = model_state.load_for_eval(workdir, report=lambda _: None)
  restored = nnx.merge(graphdef, state)
  initial = _batch_stats(EfficientCapsNet(reconstruction=False, rngs=nnx.Rngs(0)))
  assert all(not np.array_equal(a, b) for a, b in zip(_batch_stats(restored), initial))

  ev = run_cli("eval", "--workdir", str(workdir), "--test-examples", "32", "--no-progress",
               env=cli_env)
  assert ev.returncode == 0, ev.stderr
  last = json.loads(ev.stdout.strip().splitlines()[-1])
  assert last["step"] == 6 and last["test_examples"] == 32
  for key in ("test_accuracy", "test_loss", "test_margin_loss", "test_reconstruction_loss"):
    assert last[key] == pytest.approx(test[key], rel=1e-6), key


def test_cli_trains_with_dynamic_routing(tmp_path, data_dir, cli_env):
  """The same run with `--routing dynamic --routing-iters 3` trains, with finite losses."""
  workdir = tmp_path / "run"
  proc = run_cli(*RUN, "--routing", "dynamic", "--routing-iters", "3", "--workdir",
                 str(workdir), "--data-dir", data_dir, env=cli_env)
  assert proc.returncode == 0, proc.stderr
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["model"]["routing"] == "dynamic" and stored["model"]["routing_iters"] == 3
  for record in (*records(workdir, "train"), *records(workdir, "test")):
    assert_finite(record)
  assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 6


def test_cli_refuses_vote_chunks_for_efficient_capsnet(tmp_path, capsys, data_dir):
  """`--arch efficient_capsnet --vote-chunk-size 8`: exit status 2 and one error line."""
  code = cli.main(["train", "--arch", "efficient_capsnet", "--vote-chunk-size", "8",
                   "--data-dir", data_dir, "--workdir", str(tmp_path / "w"), "--max-steps", "1"])
  assert code == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("capsjax: error: "), err
  assert "vote_chunk_size" in lines[0] and "Traceback" not in err


def test_viz_of_a_network_without_its_decoder_skips_what_needs_one(tmp_path, data_dir):
  """`--model reconstruction=false`: viz draws what it can and skips reconstructions and
  perturbations with one line each saying why (exit 0)."""
  pytest.importorskip("matplotlib")
  workdir = tmp_path / "nodecoder"
  assert cli.main([*RUN, "--model", "reconstruction=false", "--max-steps", "3", "--data-dir",
                   data_dir, "--workdir", str(workdir)]) == 0
  out = tmp_path / "figures"
  result = run_cli("viz", "--workdir", str(workdir), "--no-progress", "--test-examples", "32",
                   "--figures", "reconstructions,perturbations,confusion", "--out", str(out),
                   env={"TFDS_DATA_DIR": data_dir}, timeout=600)
  assert result.returncode == 0, result.stderr
  skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
  assert len(skipped) == 2 and all("built without its decoder" in line for line in skipped)
  assert sorted(p.name for p in out.iterdir()) == ["confusion.png"]
