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


def test_viz_draws_every_figure_that_applies(capsnet_run, data_dir, tmp_path):
  code, out, err = _run("viz", "--workdir", str(capsnet_run), "--data-dir", data_dir,
                        "--out", str(tmp_path), "--test-examples", str(TEST_EXAMPLES),
                        "--no-progress")
  assert code == 0, err
  drawn = json.loads(out.strip().splitlines()[-1])["figures"]
  # An MNIST run: the two figures of other datasets are not attempted (nor said to be skipped).
  assert list(drawn) == [f for f in viz.FIGURES if f not in ("multimnist", "affnist")]
  assert "skipped" not in err and "skipped" not in out, err
  for name, path in drawn.items():
    assert path == str(tmp_path / f"{name}.png")
    with Image.open(path) as image:
      assert image.format == "PNG" and min(image.size) > 200
  # Named, they are skipped with the reason (and read no data: none applies).
  code, out, err = _run("viz", "--workdir", str(capsnet_run), "--data-dir", "/nonexistent",
                        "--out", str(tmp_path), "--no-progress", "--figures", "multimnist,affnist")
  assert code == 0, err
  assert json.loads(out.strip().splitlines()[-1])["figures"] == {
      "multimnist": "skipped: the run trained on mnist, not multimnist",
      "affnist": "skipped: the network takes 28x28 inputs, affNIST 40x40"}
  assert "capsjax: multimnist: skipped, the run trained on mnist" in err
  assert "capsjax: affnist: skipped, the network takes 28x28 inputs" in err


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
  assert list(drawn) == ["confusion", "curves", "samples"] and "skipped" not in err, (drawn, err)
  assert drawn["confusion"] == str(workdir / "figures" / "confusion.png")
  assert (workdir / "figures" / "curves.png").is_file()
  code, out, err = _run("viz", "--workdir", str(workdir), "--data-dir", data_dir,
                        "--test-examples", str(TEST_EXAMPLES), "--no-progress", "--figures",
                        "reconstructions,perturbations,routing")
  assert code == 0, err
  drawn = json.loads(out.strip().splitlines()[-1])["figures"]
  for name in ("reconstructions", "perturbations", "routing"):
    assert drawn[name].startswith("skipped: arch 'baseline' has no"), drawn
    assert f"capsjax: {name}: skipped, arch 'baseline' has no" in err


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
  # The pairs do not depend on the step's key: one training row, named so.
  rows = viz._sample_rows("multimnist", model.config, data_dir)
  assert [r[0] for r in rows] == ["train,\nevery step", "test"]


def test_matplotlib_is_checked_before_the_checkpoint_or_any_data(capsnet_run, data_dir,
                                                                 tmp_path, monkeypatch):
  """Without matplotlib (or with a matplotlib whose pyplot cannot be imported) `viz` says so in
  one line before it loads the checkpoint, reads a test example or evaluates anything."""
  import sys

  touched = []
  for name in ("dataset_examples", "run_test_set", "pair_panels"):
    monkeypatch.setattr(viz, name, lambda *a, _n=name, **k: touched.append(_n))
  monkeypatch.setattr(api, "load", lambda *a, **k: touched.append("load"))
  for module, said in (("matplotlib", "which is not installed"),
                       ("matplotlib.pyplot", "which cannot be imported (matplotlib.pyplot")):
    with monkeypatch.context() as m:
      m.setitem(sys.modules, module, None)  # `import module` raises ImportError
      code, _, err = _run("viz", "--workdir", str(capsnet_run), "--data-dir", data_dir,
                          "--out", str(tmp_path / "fig"), "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert f"capsjax viz draws with matplotlib, {said}" in err and "capsjax[plot]" in err, err
  assert touched == [] and not (tmp_path / "fig").exists()


def test_only_the_figures_that_apply_are_attempted():
  mnist = viz.RunTraits("mnist", "capsnet", (28, 28), True, True, True)
  assert viz.applicable_figures(mnist) == ["reconstructions", "perturbations", "routing",
                                           "confusion", "curves", "samples"]
  baseline = mnist._replace(arch="baseline", has_decoder=False, has_capsules=False,
                            has_routing=False)
  assert viz.applicable_figures(baseline) == ["confusion", "curves", "samples"]
  assert viz.skip_reason("routing", baseline) == "arch 'baseline' has no routing"
  multi = mnist._replace(dataset="multimnist", input_hw=(36, 36))
  assert viz.applicable_figures(multi) == ["curves", "multimnist", "samples"]
  assert viz.skip_reason("confusion", multi).startswith("a MultiMNIST run has two labels")
  expanded = mnist._replace(dataset="expanded_mnist", input_hw=(40, 40))
  assert viz.applicable_figures(expanded) == [f for f in viz.FIGURES if f != "multimnist"]
  assert viz.skip_reason("affnist", mnist) == ("the network takes 28x28 inputs, affNIST 40x40")


def test_count_text_colour_follows_the_cell_luminance():
  import matplotlib

  reds = matplotlib.colormaps["Reds"]
  assert viz.text_color(reds(1.0)) == "white"  # the darkest cell: the largest error count
  assert viz.text_color(reds(0.0)) == "black"
  assert viz.text_color((0, 0, 0)) == "white" and viz.text_color((1, 1, 1, 1)) == "black"
  assert viz.text_color((1.0, 1.0, 0.0)) == "black"  # yellow is light
  assert viz.text_color((0.0, 0.0, 1.0)) == "white"  # pure blue is dark
  # Along the map, the colour switches once, from black (light cells) to white (dark cells).
  colours = [viz.text_color(reds(x)) for x in np.linspace(0, 1, 101)]
  switch = colours.index("white")
  assert set(colours[:switch]) == {"black"} and set(colours[switch:]) == {"white"}


def test_coupling_colour_range_is_anchored_at_uniform():
  # Near-uniform mean couplings (0.0985..0.102 of K = 10) get the full minimum range
  # 0.05..0.15, so they draw near-white, not as structure spanning the colour map.
  near = np.array([[0.0985, 0.1], [0.102, 0.0999]])
  assert viz.centred_range(near, 0.1, 0.05) == pytest.approx((0.05, 0.15))
  # Wider ones: symmetric about 1/K, reaching the farthest value (NaN gaps ignored).
  wide = np.array([0.02, 0.1, 0.39, np.nan])
  assert viz.centred_range(wide, 0.1, 0.05) == pytest.approx((0.1 - 0.29, 0.39))


def test_titles_wrap_to_the_figure_width():
  title = ("mm (capsnet, step 2): MultiMNIST test pairs (Fig. 5); R: the two longest capsules "
           "decoded in red and green (red title: wrong); *: an absent class decoded")
  narrow = viz.wrap_title(title, 1.15 * 7, 9)  # a 7-column multimnist figure
  assert narrow.replace("\n", " ") == title and narrow.count("\n") >= 1
  assert max(map(len, narrow.splitlines())) <= int(1.15 * 7 * 72 / (0.6 * 9))
  assert viz.wrap_title(title, 20, 9) == title  # wide enough: one line
  assert viz.wrap_title("a\nb", 20, 9) == "a\nb"  # its own line breaks kept


def test_perturbation_cells_are_drawn_at_twice_their_size(tmp_path):
  grids = {3: np.random.default_rng(0).random((4, 11, 28, 28, 1), np.float32)}
  title = "run (capsnet, step 1): each row one capsule dimension moved by -0.25..+0.25 (step 0.05)"
  viz.draw_perturbations(grids, tmp_path / "p.png", title)
  with Image.open(tmp_path / "p.png") as image:
    assert image.mode == "L"  # grey: one channel
    width, height = image.size
  step = viz.PERTURBATION_SCALE * 29  # one 28-px cell and its 1-px gap
  assert viz.PERTURBATION_SCALE >= 2 and width >= 11 * step and height >= 4 * step


def test_sample_rows_say_what_they_are(capsnet_run, data_dir):
  model = api.load(capsnet_run)
  rows = viz._sample_rows("mnist", model.config, data_dir)
  assert [r[0] for r in rows] == ["train,\nstep 0's draw", "train,\nstep 1's draw", "test"]
  (_, first, labels, _), (_, second, labels2, _) = rows[:2]
  assert labels == labels2 and not np.array_equal(first, second)  # same digits, new shifts
