"""`capsjax eval` and `capsjax viz` evaluate a run on the test examples it recorded
(TrainConfig.test_examples) unless told otherwise: `--test-examples N`, or `--test-examples all`
for the whole set (a MultiMNIST run's 10M pairs). On another dataset, as many examples as the run
evaluated on its own set, at most the whole other set."""

import dataclasses
import json
import sys

import pytest

import capsjax
from capsjax import cli, viz
from capsjax.train import model_state
from conftest import TINY_MODEL_ARGS, run_cli

TINY = dict(conv_channels=16, primary_channels=4, primary_dim=4, digit_dim=6,
            decoder_hidden=[32, 64])


@pytest.fixture(scope="module")
def multimnist_run(tmp_path_factory, data_dir):
  """A tiny CapsNet trained 2 steps on MultiMNIST, evaluating on 40 of the 10M test pairs."""
  workdir = tmp_path_factory.mktemp("mm") / "run"
  done = run_cli("train", "--config", "multimnist_cpu", "--dataset", "multimnist", "--data-dir",
                 data_dir, "--workdir", str(workdir), "--max-steps", "2", "--batch-size", "8",
                 "--train-examples", "200", "--test-examples", "40", "--no-progress",
                 *TINY_MODEL_ARGS)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1])["test_examples"] == 40
  return workdir


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, data_dir):
  """A tiny CapsNet trained 2 steps on MNIST through `capsjax.fit`, test_examples=40."""
  workdir = tmp_path_factory.mktemp("mnist") / "run"
  capsjax.fit("quick", workdir, data_dir, progress=False, train_examples=256, test_examples=40,
              max_steps=2, batch_size=8, model=TINY)
  return workdir


def _recorded(workdir) -> int | None:
  return json.loads((workdir / "config.json").read_text())["config"]["test_examples"]


def test_eval_of_a_multimnist_run_uses_the_recorded_test_examples(multimnist_run, data_dir,
                                                                  cli_env):
  assert _recorded(multimnist_run) == 40  # --test-examples of train is recorded with the run
  ev = run_cli("eval", "--workdir", str(multimnist_run), "--data-dir", data_dir, env=cli_env)
  assert ev.returncode == 0, ev.stderr
  record = json.loads(ev.stdout.strip().splitlines()[-1])
  assert record["dataset"] == "multimnist" and record["test_examples"] == 40
  assert record["step"] == 2 and 0 <= record["test_accuracy"] <= 1
  assert "eval multimnist (40 examples)" in ev.stderr  # the bar shows the total it evaluates
  assert "40/40" in ev.stderr


def _last_record(capsys) -> dict:
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_all_is_the_whole_set_and_n_is_n(multimnist_run, mnist_run, data_dir, capsys):
  base = ["eval", "--workdir", str(multimnist_run), "--data-dir", data_dir, "--no-progress"]
  assert cli.main([*base, "--test-examples", "12"]) == 0
  assert _last_record(capsys)["test_examples"] == 12
  assert cli.main(base) == 0
  assert _last_record(capsys)["test_examples"] == 40
  # "all": the whole set, here MNIST's 10,000 test images (a MultiMNIST run's would be 10M).
  assert cli.main(["eval", "--workdir", str(mnist_run), "--data-dir", data_dir, "--no-progress",
                   "--test-examples", "all"]) == 0
  assert _last_record(capsys)["test_examples"] == 10_000
  for bad in ("some", "0", "-3", "all10"):
    assert cli.main([*base, "--test-examples", bad]) == 2
    err = capsys.readouterr().err
    assert err == (f"capsjax: error: --test-examples must be a positive integer or 'all', got "
                   f"{bad!r}.\n")


def test_eval_on_another_dataset_takes_as_many_examples_as_the_run(mnist_run, data_dir,
                                                                   monkeypatch, capsys):
  assert _recorded(mnist_run) == 40  # `capsjax.fit(test_examples=40)` is recorded too
  base = ["eval", "--workdir", str(mnist_run), "--data-dir", data_dir, "--no-progress",
          "--dataset", "fashion_mnist"]
  assert cli.main(base) == 0  # 40 Fashion-MNIST images
  record = _last_record(capsys)
  assert record["dataset"] == "fashion_mnist" and record["test_examples"] == 40
  # A run that recorded no count (an older run) evaluated its whole set, 10,000 MNIST images:
  # that many of the other set.
  load = model_state.load_for_eval

  def unrecorded(*args, **kwargs):
    graphdef, state, meta = load(*args, **kwargs)
    return graphdef, state, {**meta, "config": {**meta["config"], "test_examples": None}}

  monkeypatch.setattr(model_state, "load_for_eval", unrecorded)
  assert cli.main(base) == 0
  assert _last_record(capsys)["test_examples"] == 10_000


def test_viz_draws_from_the_recorded_test_examples(multimnist_run, data_dir, tmp_path,
                                                   monkeypatch):
  asked = []
  real = viz.dataset_examples

  class Stop(Exception):
    pass

  def spy(name, config, split, data_dir, count, stored_limit=None, key=None):
    asked.append(count)
    if count is None:  # `all`: the whole 10M-pair set, not built here
      raise Stop
    return real(name, config, split, data_dir, count, stored_limit, key)

  monkeypatch.setattr(viz, "dataset_examples", spy)
  base = ["viz", "--workdir", str(multimnist_run), "--data-dir", data_dir, "--out",
          str(tmp_path), "--figures", "multimnist", "--no-progress"]
  assert cli.main(base) == 0
  assert (tmp_path / "multimnist.png").stat().st_size > 10_000
  with pytest.raises(Stop):
    cli.main([*base, "--test-examples", "all"])
  assert asked == [40, None]
  assert cli.main([*base, "--test-examples", "0"]) == 2


def test_viz_of_a_run_without_a_recorded_count_uses_its_whole_stored_set(mnist_run, data_dir,
                                                                         tmp_path, monkeypatch):
  load = capsjax.api.load

  def unrecorded(*args, **kwargs):  # an older run, which recorded no count
    model = load(*args, **kwargs)
    model.config = dataclasses.replace(model.config, test_examples=None)
    return model

  monkeypatch.setattr(capsjax.api, "load", unrecorded)
  seen, real = [], viz.run_test_set

  def counting(model, images, labels, progress):  # the real pass, counting its images
    seen.append(len(images))
    return real(model, images, labels, progress)

  monkeypatch.setattr(viz, "run_test_set", counting)
  drawn = viz.render(str(mnist_run), data_dir, str(tmp_path), ["confusion"], progress=False)
  assert seen == [10_000] and drawn["confusion"].endswith("confusion.png")


def test_viz_says_matplotlib_is_missing_before_evaluating(mnist_run, data_dir, tmp_path,
                                                          monkeypatch):
  seen = []
  monkeypatch.setattr(viz, "run_test_set", lambda *args: seen.append(args))  # must not run
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
  with pytest.raises(ValueError, match="matplotlib, which is not installed"):
    viz.render(str(mnist_run), data_dir, str(tmp_path), ["confusion"], progress=False)
  assert seen == []
