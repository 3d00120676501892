"""The networks the loop trains: the paper's baseline CNN, and CapsNet's `official` variant
checked difference by difference against float64 references written from the official code."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax import cli, routing
from capsjax.nn import losses
from capsjax.nn.cnn import BaselineCNN
from capsjax.nn.layers import PrimaryCaps
from capsjax.nn.model import count_params
from capsjax.train import archs, presets
from capsjax.train.archs import capsnet as capsnet_arch
from conftest import TINY_MODEL_ARGS, tiny_capsnet

TINY_BASELINE = dict(conv_channels=(4, 4, 2), hidden=(8, 6))
TINY_BASELINE_ARGS = ["--model", "conv_channels=[4,4,2]", "--model", "hidden=[8,6]"]


def test_baseline_has_the_papers_35_4m_parameters():
  model = nnx.eval_shape(lambda: BaselineCNN(rngs=nnx.Rngs(0)))
  assert count_params(model) == 35_445_522


def test_baseline_convolutions_are_same_padded_5x5():
  model = BaselineCNN(rngs=nnx.Rngs(0), **TINY_BASELINE)
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  conv = model.convs[0]
  ours = jax.nn.relu(conv(jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))))
  reference = jax.nn.relu(jax.lax.conv_general_dilated(
      x, conv.kernel[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      + conv.bias[...])
  assert ours.shape == (2, 28, 28, 4)
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_baseline_dropout_only_when_training():
  model = BaselineCNN(rngs=nnx.Rngs(0), **TINY_BASELINE)
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  plain = model(x)
  np.testing.assert_array_equal(plain, model(x))  # deterministic at test time
  a, b = model(x, dropout_key=jax.random.key(2)), model(x, dropout_key=jax.random.key(3))
  assert not np.allclose(a, b) and not np.allclose(a, plain)
  unscaled = BaselineCNN(rngs=nnx.Rngs(0), dropout=0.0, **TINY_BASELINE)
  np.testing.assert_array_equal(unscaled(x, dropout_key=jax.random.key(2)), plain)


def test_baseline_bad_settings_name_the_value():
  with pytest.raises(ValueError, match="conv_kernel must be odd"):
    BaselineCNN(rngs=nnx.Rngs(0), conv_kernel=4)
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
    BaselineCNN(rngs=nnx.Rngs(0), dropout=1.5)


def _run(*args):
  import contextlib
  import io
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(list(args))
  return code, out.getvalue(), err.getvalue()


def test_baseline_trains_resumes_and_evaluates_through_the_cli(tmp_path, data_dir):
  workdir = tmp_path / "baseline"
  common = ["--data-dir", data_dir, "--workdir", str(workdir), "--arch", "baseline",
            *TINY_BASELINE_ARGS, "--batch-size", "16", "--train-examples", "128",
            "--test-examples", "40", "--log-every", "1", "--no-progress"]
  code, out, err = _run("train", *common, "--max-steps", "2")
  assert code == 0, err
  first = json.loads(out.strip().splitlines()[-1])
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["model"]["arch"] == "baseline" and "routing" not in stored["model"]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [1, 2]
  # Cross-entropy is the whole loss: no margin/reconstruction terms are logged.
  assert "margin_loss" not in train_records[0] and "test_margin_loss" not in first
  assert 0 < train_records[0]["loss"] < 10 and first["test_examples"] == 40
  code, out, err = _run("train", *common, "--max-steps", "3")
  assert code == 0, err
  assert "Resuming from checkpoint at step 2" in out
  code, out, err = _run("eval", "--workdir", str(workdir), "--data-dir", data_dir,
                        "--test-examples", "40", "--no-progress")
  assert code == 0, err
  evaluated = json.loads(out.strip().splitlines()[-1])
  final = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "test"][-1]
  assert evaluated["step"] == 3 and evaluated["test_accuracy"] == final["test_accuracy"]


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet"],
     "unknown arch 'resnet'; expected one of capsnet, baseline, efficient_capsnet"),
    (["--arch", "baseline", "--routing", "uniform"],
     "routing is a setting of arch 'capsnet'; arch 'baseline' does not use it"),
    (["--arch", "baseline", "--model", "digit_dim=8"], "unknown model setting 'digit_dim'"),
    (["--model", "variant=\"tf1\""], "variant must be one of paper, official, got 'tf1'"),
    (["--model", "variant=\"official\"", "--routing", "uniform"],
     "variant 'official' needs routing 'dynamic'"),
])
def test_bad_arch_settings_are_one_line_errors(tmp_path, data_dir, args, message):
  code, _, err = _run("train", "--data-dir", data_dir, "--workdir", str(tmp_path / "w"),
                      "--max-steps", "1", "--train-examples", "32", "--batch-size", "8",
                      "--no-progress", *args)
  assert code == 2 and err.count("\n") == 1 and message in err, err


def test_runs_recorded_before_archs_existed_are_capsnets():
  assert archs.of_settings({"input_shape": [28, 28, 1], "num_classes": 10}).name == "capsnet"


# ---- the official variant, against float64 references written from the official TF1 code ----

def _official_margin(lengths, onehot):
  """layers._margin_loss then reduce_mean over [batch, classes] (float64)."""
  logits = lengths - 0.5
  positive = onehot * (logits < 0.4) * (logits - 0.4) ** 2
  negative = (1 - onehot) * (logits > -0.4) * (logits + 0.4) ** 2
  return np.mean(0.5 * positive + 0.5 * 0.5 * negative)


def test_official_margin_loss_is_the_official_codes():
  rng = np.random.default_rng(0)
  lengths = rng.uniform(0, 1, (6, 10))
  labels = rng.integers(0, 10, 6)
  onehot = np.eye(10)[labels]
  model = tiny_capsnet(variant="official")
  paper = losses.margin_loss(jnp.asarray(lengths, jnp.float32), jnp.asarray(onehot, jnp.float32))
  # The loss function divides Eq. 4 by 2K for the official variant; its batch mean is the
  # official scalar.
  ours = np.mean(np.asarray(paper) / (2 * model.num_classes))
  np.testing.assert_allclose(ours, _official_margin(lengths, onehot), rtol=1e-6)
  out = capsnet_arch.loss_fn(0.0)(model, jnp.zeros((2, 28, 28, 1)), jnp.array([1, 2]),
                                  train=True)
  eq4 = losses.margin_loss(model(jnp.zeros((2, 28, 28, 1)), jnp.array([1, 2])).lengths,
                           jax.nn.one_hot(jnp.array([1, 2]), 10))
  np.testing.assert_allclose(out.total, eq4 / 20, rtol=1e-6)


def _squash64(s):
  norm = np.linalg.norm(s, axis=-1, keepdims=True)
  return s / norm * norm**2 / (1 + norm**2)


def test_official_primary_capsules_are_squash_of_conv_over_32_plus_bias():
  layer = PrimaryCaps(3, channels=4, dim=2, kernel_size=3, stride=2, official=True,
                      rngs=nnx.Rngs(0))
  layer.capsule_bias[...] = jax.random.normal(jax.random.key(5), (4, 2))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (1, 7, 7, 3)), np.float64)
  kernel = np.asarray(layer.conv.kernel[...], np.float64)  # [3, 3, 3, 8], no conv bias
  assert layer.conv.bias is None
  conv = np.zeros((3, 3, 8))
  for i in range(3):
    for j in range(3):
      conv[i, j] = np.einsum("hwc,hwco->o", x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], kernel)
  # The official layer: one routing iteration over 4 outputs with one input -> couplings 1/4.
  expected = _squash64(conv.reshape(9, 4, 2) / 4 + np.asarray(layer.capsule_bias[...]))
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32))[0], expected.reshape(36, 2),
                             rtol=1e-5, atol=1e-6)


def _official_routing(votes, bias, num_routing):
  """layers._update_routing for one example (float64): logits += agreement on every pass."""
  logits = np.zeros(votes.shape[:2])
  for _ in range(num_routing):
    route = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    activation = _squash64(np.einsum("ij,ijd->jd", route, votes) + bias)
    logits = logits + np.einsum("ijd,jd->ij", votes, activation)
  return activation


def test_official_digit_capsules_add_the_bias_before_every_squash():
  rng = np.random.default_rng(1)
  votes, bias = rng.normal(0, 0.3, (12, 5, 4)), rng.normal(0, 0.3, (5, 4))
  ours = routing.dynamic_routing(jnp.asarray(votes, jnp.float32), 3,
                                 bias=jnp.asarray(bias, jnp.float32)).v
  np.testing.assert_allclose(ours, _official_routing(votes, bias, 3), rtol=1e-5, atol=1e-6)
  plain = routing.dynamic_routing(jnp.asarray(votes, jnp.float32), 3).v
  assert not np.allclose(plain, ours, atol=1e-3)
  # The layer passes its learnt bias; a user cannot set it as a routing option.
  with pytest.raises(ValueError, match="does not take option"):
    routing.check_options("dynamic", {"bias": 0.1})


def test_official_initialisation():
  model = tiny_capsnet(variant="official")
  for bias in (model.conv1.bias, model.primary.capsule_bias, model.digits.routing_params["bias"],
               *(layer.bias for layer in model.decoder.layers)):
    np.testing.assert_array_equal(bias[...], np.float32(0.1))
  for weight, std in [(model.conv1.kernel, 0.05), (model.primary.conv.kernel, 0.1),
                      (model.digits.W, 0.1), (model.decoder.layers[0].kernel, 0.1)]:
    w = np.asarray(weight[...])
    assert np.abs(w).max() <= 2 * std + 1e-7  # truncated at two standard deviations
    assert 0.8 * std < w.std() < 0.95 * std  # a 2-sigma truncated normal has sd 0.88 sigma
  paper = tiny_capsnet()
  # The primary conv's bias [types * dim] becomes b [types, dim]; DigitCaps gains b [10, dim].
  assert count_params(model) == count_params(paper) + 10 * 6


def test_official_variant_trains_through_the_cli(tmp_path, data_dir):
  workdir = tmp_path / "official"
  code, out, err = _run("train", "--data-dir", data_dir, "--workdir", str(workdir),
                        *TINY_MODEL_ARGS, "--model", "variant=\"official\"", "--max-steps", "2",
                        "--batch-size", "8", "--train-examples", "64", "--test-examples", "16",
                        "--no-progress")
  assert code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  assert np.isfinite(result["test_loss"])
  assert json.loads((workdir / "config.json").read_text())["model"]["variant"] == "official"


@pytest.mark.parametrize("name", ["quick", "hour", "paper", "baseline"])
def test_every_preset_builds_the_papers_network(name):
  from capsjax import data
  from capsjax.train import model_state, steps

  assert name in presets.available()
  config = presets.get(name).validate()
  split = data.Split(np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int32), 10)
  settings = model_state.model_settings(config, split)
  model = nnx.eval_shape(lambda: model_state.create_model(settings, config))
  assert count_params(model) == {"capsnet": 8_215_568, "baseline": 35_445_522}[config.arch]
  if name == "hour":  # 2.9 epochs at batch 32, annealed to 1.35e-4
    assert config.total_steps(60_000) == 5500 and config.batch_size == 32
    schedule = steps.make_schedule(config.learning_rate, config.decay_rate, config.decay_steps)
    np.testing.assert_allclose(schedule(5499), 1e-3 * 0.9**19, rtol=1e-5)
