"""`capsjax viz`: each figure's numbers, the PNGs, the baseline's skipped figures, bad input."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from capsjax import api, cli, data, viz
from conftest import TINY_MODEL_ARGS

TEST_EXAMPLES = 60


def _run(*args):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(list(args))
  return code, out.getvalue(), err.getvalue()


def _train(workdir, data_dir, *extra):
  code, _, err = _run("train", "--data-dir", data_dir, "--workdir", str(workdir),
                      "--max-steps", "6", "--batch-size", "16", "--train-examples", "256",
                      "--test-examples", str(TEST_EXAMPLES), "--log-every", "2", "--no-progress",
                      *extra)
  assert code == 0, err


@pytest.fixture(scope="module")
def capsnet_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("viz") / "capsnet"
  _train(workdir, data_dir, *TINY_MODEL_ARGS)
  return workdir


@pytest.fixture(scope="module")
def test_set(data_dir):
  return data.load_split("mnist", "test", data_dir, limit=TEST_EXAMPLES)


def test_viz_draws_every_figure(capsnet_run, data_dir, tmp_path):
  code, out, err = _run("viz", "--workdir", str(capsnet_run), "--data-dir", data_dir,
                        "--out", str(tmp_path), "--test-examples", str(TEST_EXAMPLES),
                        "--no-progress")
  assert code == 0, err
  drawn = json.loads(out.strip().splitlines()[-1])["figures"]
  assert list(drawn) == list(viz.FIGURES)
  assert drawn.pop("multimnist") == "skipped: the run trained on mnist, not multimnist"
  assert drawn.pop("affnist") == "skipped: the network takes 28x28 inputs, affNIST 40x40"
  for name, path in drawn.items():
    assert path == str(tmp_path / f"{name}.png")
    with Image.open(path) as image:
      assert image.format == "PNG" and min(image.size) > 200


def test_perturbation_at_offset_zero_is_the_plain_reconstruction(capsnet_run, test_set):
  model = api.load(capsnet_run)
  pred = model.predict(test_set.images[:3])
  for i in range(3):
    cls = int(pred.classes[i])
    grid = viz.perturbations(model, pred.capsules[i], cls)
    assert grid.shape == (6, 11, 28, 28, 1)  # the tiny model's 6 capsule dimensions
    zero = viz.OFFSETS.index(0.0)
    for d in range(6):
      np.testing.assert_allclose(grid[d, zero], pred.reconstructions[i], atol=1e-6)
    # Moving dimension d changes the image (only through that dimension).
    assert not np.allclose(grid[0, 0], grid[0, -1], atol=1e-4)
  assert viz.OFFSETS == (-0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def test_couplings_rows_sum_to_one_and_maps_follow_the_grid(capsnet_run, test_set):
  model = api.load(capsnet_run)
  out = model.outputs(test_set.images[:4])
  grid = viz.primary_grid(model)
  assert grid == (6, 6, 4) and out.couplings.shape == (4, 6 * 6 * 4, 10)
  np.testing.assert_allclose(out.couplings.sum(-1), 1.0, rtol=1e-5)  # softmax over classes
  maps = viz.coupling_map(out.couplings[0], grid, 3)
  assert maps.shape == (4, 6, 6)
  # Primary capsule (row 2, col 5, type 1) sits at index (2 * 6 + 5) * 4 + 1.
  assert maps[1, 2, 5] == out.couplings[0, (2 * 6 + 5) * 4 + 1, 3]
  result = viz.run_test_set(model, test_set.images, test_set.labels, progress=False)
  assert result.type_coupling.shape == (4, 10)
  np.testing.assert_allclose(result.type_coupling.sum(-1), 1.0, rtol=1e-5)


def test_confusion_matrix_adds_up(capsnet_run, test_set):
  model = api.load(capsnet_run)
  result = viz.run_test_set(model, test_set.images, test_set.labels, progress=False)
  matrix = viz.confusion_matrix(result.labels, result.predictions, 10)
  assert matrix.sum() == TEST_EXAMPLES
  assert np.trace(matrix) == np.sum(result.labels == result.predictions)
  np.testing.assert_array_equal(matrix.sum(1), np.bincount(test_set.labels, minlength=10))
  picked = viz.pick_examples(result.labels, result.predictions, num_correct=3, num_wrong=2)
  right, wrong = picked[:3], picked[3:]
  assert np.all(result.labels[right] == result.predictions[right])
  assert np.all(result.labels[wrong] != result.predictions[wrong])


def test_viz_of_the_baseline_skips_what_does_not_apply(tmp_path, data_dir):
  workdir = tmp_path / "baseline"
  _train(workdir, data_dir, "--arch", "baseline", "--model", "conv_channels=[4,4,2]",
         "--model", "hidden=[8,6]")
  code, out, err = _run("viz", "--workdir", str(workdir), "--data-dir", data_dir,
                        "--test-examples", str(TEST_EXAMPLES), "--no-progress")
  assert code == 0, err
  drawn = json.loads(out.strip().splitlines()[-1])["figures"]
  for name in ("reconstructions", "perturbations", "routing"):
    assert drawn[name].startswith("skipped: arch 'baseline' has no"), drawn
    assert f"capsjax: {name}: skipped, arch 'baseline' has no" in err
  assert drawn["confusion"] == str(workdir / "figures" / "confusion.png")
  assert (workdir / "figures" / "curves.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--figures", "saliency"], "unknown figure 'saliency'; expected some of reconstructions"),
    (["--digit", "10"], "--digit must be a class in 0..9, got 10"),
    (["--dims", "7"], "--dims must be between 1 and 6 (the checkpoint's class capsules have 6 "
                      "dimensions), got 7"),
])
def test_bad_viz_input_is_one_line(capsnet_run, data_dir, tmp_path, args, message):
  code, _, err = _run("viz", "--workdir", str(capsnet_run), "--data-dir", data_dir,
                      "--out", str(tmp_path), "--no-progress", *args)
  assert code == 2 and err.count("\n") == 1 and message in err, err


def test_viz_without_a_checkpoint_is_one_line(tmp_path, data_dir):
  (tmp_path / "empty").mkdir()
  code, _, err = _run("viz", "--workdir", str(tmp_path / "empty"), "--data-dir", data_dir)
  assert code == 2 and err.count("\n") == 1 and "has no checkpoints/" in err, err


@pytest.mark.parametrize("rule", ["dynamic", "uniform", "self_attention", "inverted_dot_product",
                                  "em"])
def test_routing_figure_numbers_exist_for_every_rule(rule):
  import jax
  from flax import nnx

  import capsjax

  assert rule in capsjax.routing.available()
  model = capsjax.CapsNet(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
                          decoder_hidden=(32, 64), routing=rule, rngs=nnx.Rngs(0))
  out = model(jax.random.uniform(jax.random.key(0), (2, 28, 28, 1)))
  couplings = np.asarray(out.couplings)
  assert couplings.shape == (2, 6 * 6 * 4, 10) and np.all(np.isfinite(couplings))
  assert np.all(couplings >= 0)
  grid = model.primary_grid
  assert viz.coupling_map(couplings[0], grid, 2).shape == (4, 6, 6)
  assert viz.coupling_by_type(couplings, grid).shape == (4, 10)


def test_multimnist_figure_numbers_and_png(tmp_path, data_dir):
  """Fig. 5 of a tiny CapsNet trained 2 steps on MultiMNIST: the two longest capsules, each
  decoded alone, the most active absent class; the one-label figures are skipped."""
  workdir = tmp_path / "mm"
  code, _, err = _run("train", "--config", "multimnist_cpu", "--data-dir", data_dir,
                      "--workdir", str(workdir), "--max-steps", "2", "--batch-size", "4",
                      "--train-examples", "100", "--test-examples", "8", "--no-progress",
                      *TINY_MODEL_ARGS)
  assert code == 0, err
  model = api.load(workdir)
  images, (labels, _) = viz.dataset_examples("multimnist", model.config, "test", data_dir, 16)
  assert images.shape == (16, 36, 36, 1) and labels.shape == (16, 2)
  panels = viz.pair_panels(model, images, labels)
  scores = model.outputs(images).scores
  for i in range(16):
    order = np.argsort(-scores[i])
    assert list(panels.predicted[i]) == list(order[:2])
    assert panels.absent[i] not in set(labels[i]) | set(panels.predicted[i])
    assert panels.correct[i] == (set(labels[i]) == set(panels.predicted[i]))
  capsules = model.outputs(images).capsules
  np.testing.assert_allclose(panels.first, model.decode(capsules, panels.predicted[:, 0]),
                             atol=1e-6)
  rgb = viz.overlay(panels.first[0], panels.second[0])
  assert rgb.shape == (36, 36, 3) and np.all(rgb[..., 2] == 0)
  np.testing.assert_array_equal(rgb[..., 1], panels.second[0][..., 0])
  code, out, err = _run("viz", "--workdir", str(workdir), "--data-dir", data_dir, "--out",
                        str(tmp_path / "fig"), "--test-examples", "24", "--no-progress",
                        "--figures", "multimnist,samples,confusion")
  assert code == 0, err
  drawn = json.loads(out.strip().splitlines()[-1])["figures"]
  assert drawn["confusion"].startswith("skipped: a MultiMNIST run has two labels")
  for name in ("multimnist", "samples"):
    with Image.open(drawn[name]) as image:
      assert image.format == "PNG" and min(image.size) > 200
