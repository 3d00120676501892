"""A user's own data through the CLI and `capsjax.fit`: any TFDS set of the data dir
(`tfds:NAME[:VERSION]`), an image folder (`folder:PATH`, cached once decoded), NumPy arrays,
and the input sizes and class names that follow from them; each bad input one error line."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import capsjax
from capsjax import cli
from capsjax.data import folder as folder_lib
from conftest import TINY_MODEL_ARGS, records

SHORT = ["--config", "quick", "--max-steps", "3", "--batch-size", "8", "--log-every", "1",
         "--checkpoint-every", "3", "--no-progress", *TINY_MODEL_ARGS]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
  """Every test decodes folders into its own cache dir."""
  path = tmp_path / "cache"
  monkeypatch.setenv(folder_lib.CACHE_ENV, str(path))
  return path


def _write_images(folder: Path, classes: dict[str, int], size=(20, 24), mode="RGB", seed=0):
  """`count` random images of `size` (H, W) per class under folder/CLASS/."""
  rng = np.random.default_rng(seed)
  for name, count in classes.items():
    (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      shape = (*size, 3) if mode == "RGB" else size
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name / f"{i}.png")


def _error(capsys) -> str:
  """The one stderr line of a refused command."""
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("capsjax: error: "), err
  return err[0]


def test_tfds_mnist_trains_exactly_as_mnist(tmp_path, data_dir):
  """`tfds:mnist` reads the same stored digits, in the same order, through the same
  augmentation: the losses of every step and the final test record are equal."""
  for name in ("mnist", "tfds:mnist"):
    assert cli.main(["train", "--dataset", name, "--workdir", str(tmp_path / name),
                     "--data-dir", data_dir, "--train-examples", "64", "--test-examples", "16",
                     *SHORT]) == 0
  one, other = (records(tmp_path / n, "train") for n in ("mnist", "tfds:mnist"))
  assert [r["loss"] for r in one] == [r["loss"] for r in other] and len(one) == 3
  assert records(tmp_path / "mnist", "test")[-1]["test_loss"] == \
      records(tmp_path / "tfds:mnist", "test")[-1]["test_loss"]


def test_tfds_set_class_names_reach_predict(tmp_path, data_dir, capsys):
  workdir = tmp_path / "fashion"
  assert cli.main(["train", "--dataset", "tfds:fashion_mnist:3.0.1", "--workdir", str(workdir),
                   "--data-dir", data_dir, "--train-examples", "64", "--test-examples", "16",
                   *SHORT]) == 0
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["class_names"][:2] == ["T-shirt/top", "Trouser"]
  picture = tmp_path / "shirt.png"
  Image.fromarray(np.pad(np.full((16, 12), 200, np.uint8), 6)).save(picture)
  capsys.readouterr()
  assert cli.main(["predict", "--workdir", str(workdir), str(picture)]) == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line["class_name"] == recorded["class_names"][line["class"]]


@pytest.mark.parametrize("dataset, says", [
    ("tfds:cifar10", "tfds build cifar10 --data_dir"),
    ("tfds:mnist:9.9.9", "version 9.9.9 of dataset 'mnist' is not in data dir"),
    ("tfds:", "tfds:NAME or tfds:NAME:VERSION"),
])
def test_a_tfds_set_that_is_not_there(tmp_path, data_dir, capsys, dataset, says):
  workdir = tmp_path / "w"
  assert cli.main(["train", "--dataset", dataset, "--workdir", str(workdir), "--data-dir",
                   data_dir, *SHORT]) == 2
  assert says in _error(capsys) and not workdir.exists()


def test_a_tfds_set_without_image_or_label_feature():
  import tensorflow_datasets as tfds

  from capsjax.data import storage

  class Info:
    name = "texts"
    features = tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                           "label": tfds.features.ClassLabel(num_classes=2)})

  with pytest.raises(ValueError, match=r"dataset 'texts' has no image feature.*text \(Text\)"):
    storage.features_of(Info)
  Info.features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(4, 4, 1)),
      "kind": tfds.features.ClassLabel(num_classes=2),
      "size": tfds.features.ClassLabel(num_classes=3)})
  with pytest.raises(ValueError, match=r"has 2 \(kind, size\) and none called 'label'"):
    storage.features_of(Info)


def test_a_folder_with_train_and_test_trains_evaluates_and_predicts(tmp_path, capsys, cache):
  root = tmp_path / "pets"
  _write_images(root / "train", {"cat": 10, "dog": 10, "eel": 4})
  _write_images(root / "test", {"cat": 3, "dog": 3}, seed=1)
  workdir = tmp_path / "w"
  assert cli.main(["train", "--dataset", f"folder:{root}", "--workdir", str(workdir),
                   *SHORT]) == 0
  out = capsys.readouterr().out
  assert "30 images of 3 classes (24 train, 6 test), RGB, brought to 20x24 (the size of all" \
      in out and "decoded in" in out
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["class_names"] == ["cat", "dog", "eel"] and recorded["data_dir"] is None
  assert recorded["model"]["input_shape"] == [20, 24, 3]
  assert records(workdir, "test")[-1]["test_examples"] == 6
  assert cli.main(["eval", "--workdir", str(workdir), "--no-progress"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_examples"] == 6
  grey = tmp_path / "grey.png"  # a grey picture of another size for an RGB model
  Image.fromarray(np.full((40, 30), 90, np.uint8)).save(grey)
  assert cli.main(["predict", "--workdir", str(workdir), str(grey)]) == 0
  line = json.loads(capsys.readouterr().out.strip())
  assert line["class_name"] in ("cat", "dog", "eel")
  assert line["converted"] == ["L converted to RGB", "resized from 40x30 to 20x24 (HxW)"]
  assert cli.main(["viz", "--workdir", str(workdir), "--figures", "samples,confusion"]) == 0
  assert (workdir / "figures" / "samples.png").is_file()


def test_the_second_run_on_a_folder_reads_the_cache(tmp_path, capsys, cache, monkeypatch):
  root = tmp_path / "shapes"
  _write_images(root, {"a": 12, "b": 12}, size=(18, 18), mode="L")
  first = tmp_path / "first"
  assert cli.main(["train", "--dataset", f"folder:{root}", "--workdir", str(first),
                   *SHORT]) == 0
  assert "grey" in capsys.readouterr().out
  cached = list((cache / "folders").glob("*.npz"))
  assert len(cached) == 1

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again")

  monkeypatch.setattr(folder_lib, "_decode_all", no_decoding)
  assert cli.main(["train", "--dataset", f"folder:{root}", "--workdir", str(tmp_path / "2nd"),
                   *SHORT, "--seed", "1"]) == 0
  assert "decoded in" not in capsys.readouterr().out
  # Any change to the folder is a new cache (and a new decoding).
  Image.fromarray(np.zeros((18, 18), np.uint8)).save(root / "a" / "new.png")
  with pytest.raises(AssertionError, match="decoded again"):
    folder_lib.cached(root)


def test_the_held_out_test_fraction_is_fixed_and_recorded(tmp_path):
  root = tmp_path / "flat"
  _write_images(root, {"x": 20, "y": 10}, size=(18, 18))
  layout = folder_lib.scan(root, 0.2)
  assert len(layout.test) == 6 and len(layout.train) == 24
  assert layout == folder_lib.scan(root, 0.2)  # the same split every time
  assert {label for _, label in layout.test} == {0, 1}
  workdir = tmp_path / "w"
  capsjax.fit("quick", workdir, dataset=f"folder:{root}", test_fraction=0.2, max_steps=2,
              batch_size=8, progress=False, model={"conv_channels": 16, "primary_channels": 4,
                                                   "primary_dim": 4, "digit_dim": 6})
  assert json.loads((workdir / "config.json").read_text())["config"]["test_fraction"] == 0.2
  assert records(workdir, "test")[-1]["test_examples"] == 6


def _bad_folders(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
  """name -> (folder, extra flags, what the error says)."""
  cases = {}
  one = tmp_path / "one"
  _write_images(one, {"only": 4})
  cases["one class"] = (one, [], "has one class (only)")
  empty = tmp_path / "empty"
  _write_images(empty, {"a": 4, "b": 4})
  (empty / "c").mkdir()
  cases["empty class"] = (empty, [], f"class folder {str(empty / 'c')!r} holds no images")
  broken = tmp_path / "broken"
  _write_images(broken, {"a": 4, "b": 4})
  (broken / "b" / "bad.png").write_bytes(b"not a png")
  cases["unreadable"] = (broken, [], f"cannot read image {str(broken / 'b' / 'bad.png')!r}")
  mixed = tmp_path / "mixed"
  _write_images(mixed, {"a": 2}, size=(20, 20))
  _write_images(mixed, {"b": 2}, size=(22, 22))
  _write_images(mixed, {"c": 2}, size=(24, 24))
  cases["mixed sizes"] = (mixed, [], "none held by more than half of them")
  half = tmp_path / "half"
  _write_images(half / "train", {"a": 3, "b": 3})
  cases["train without test"] = (half, [], "has train/ but no test/")
  extra = tmp_path / "extra"
  _write_images(extra / "train", {"a": 3, "b": 3})
  _write_images(extra / "test", {"a": 1, "z": 1})
  cases["test class not trained"] = (extra, [], "class folder(s) z that")
  cases["fraction with a test folder"] = (extra.parent / "split", ["--test-fraction", "0.2"],
                                          "applies only to a folder without them")
  _write_images(extra.parent / "split" / "train", {"a": 3, "b": 3})
  _write_images(extra.parent / "split" / "test", {"a": 1, "b": 1})
  cases["bad fraction"] = (one.parent / "empty", ["--test-fraction", "1.5"],
                           "test_fraction must be a number in (0, 1), got 1.5")
  cases["bad size"] = (broken, ["--image-size", "20by20"], "image size must be HxW")
  small = tmp_path / "small"
  _write_images(small, {"a": 8, "b": 8}, size=(12, 12))
  cases["too small for CapsNet"] = (small, [], "the smallest input that works is 17x17")
  cases["missing"] = (tmp_path / "nowhere", [], "does not exist")
  return cases


def test_bad_folders_are_one_line_and_write_nothing(tmp_path, capsys):
  for name, (root, flags, says) in _bad_folders(tmp_path / "data").items():
    workdir = tmp_path / "runs" / name.replace(" ", "_")
    code = cli.main(["train", "--dataset", f"folder:{root}", "--workdir", str(workdir),
                     *SHORT, "--model", "conv_channels=16", *flags])
    assert code == 2, name
    assert says in _error(capsys), name
    assert not workdir.exists(), name


def test_data_settings_of_other_datasets_are_refused(tmp_path, data_dir, capsys):
  assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--data-dir", data_dir,
                   "--image-size", "32x32", *SHORT]) == 2
  assert "image_size is a setting of a user's own data" in _error(capsys)
  assert cli.main(["train", "--dataset", "tfds:mnist", "--workdir", str(tmp_path / "w"),
                   "--data-dir", data_dir, "--test-fraction", "0.2", *SHORT]) == 2
  assert "test_fraction is a setting" in _error(capsys)


def test_tfds_images_resized_on_request(tmp_path, data_dir):
  workdir = tmp_path / "w"
  capsjax.fit("quick", workdir, data_dir, dataset="tfds:mnist", image_size=[20, 20],
              max_steps=1, batch_size=8, train_examples=16, test_examples=8, progress=False,
              model={"conv_channels": 16, "primary_channels": 4, "primary_dim": 4,
                     "digit_dim": 6})
  assert json.loads((workdir / "config.json").read_text())["model"]["input_shape"] == \
      [20, 20, 1]


def test_fit_on_arrays(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 18, 18, 3), dtype=np.uint8)
  labels = np.arange(40) % 3
  workdir = tmp_path / "w"
  small = {"conv_channels": 16, "primary_channels": 4, "primary_dim": 4, "digit_dim": 6}
  result = capsjax.fit("quick", workdir, train=(images[:32], labels[:32]),
                       test=(images[32:], labels[32:]), class_names=["r", "g", "b"],
                       max_steps=2, batch_size=8, progress=False, model=small)
  assert result["test_examples"] == 8
  model = capsjax.load(workdir)
  assert model.class_names == ("r", "g", "b") and model.input_shape == (18, 18, 3)
  config = json.loads((workdir / "config.json").read_text())["config"]
  assert config["dataset"] == f"arrays:{workdir / 'arrays.npz'}"
  assert cli.main(["eval", "--workdir", str(workdir), "--no-progress"]) == 0
  # The same arrays again: the run is found finished; other arrays: refused.
  again = capsjax.fit("quick", workdir, train=(images[:32], labels[:32]),
                      test=(images[32:], labels[32:]), class_names=["r", "g", "b"],
                      max_steps=2, batch_size=8, progress=False, model=small)
  assert again["test_accuracy"] == result["test_accuracy"]
  with pytest.raises(ValueError, match="holds a run trained on other arrays"):
    capsjax.fit("quick", workdir, train=(images[:32], 2 - labels[:32]),
                test=(images[32:], labels[32:]), max_steps=2, progress=False)


@pytest.mark.parametrize("arrays, says", [
    (dict(train=("x", "y"), test=None), "give both train and test arrays"),
    (dict(lengths=True), "labels must have shape [32]"),
    (dict(shapes=True), "train images are 18x18x1 but test images 10x18x1"),
    (dict(dtypes=True), "train images are uint8 but test images float32"),
    (dict(float_labels=True), "labels must be integers, got dtype float64"),
    (dict(names=["a", "a", "b"]), "class_names repeats 'a'"),
    (dict(names=["a", "b"], labels=3), "labels must lie in [0, 1]"),
])
def test_bad_arrays_write_nothing(tmp_path, arrays, says):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (40, 18, 18), dtype=np.uint8)
  y = np.arange(40) % arrays.get("labels", 2)
  train, test = (x[:32], y[:32]), (x[32:], y[32:])
  if arrays.get("lengths"):
    train = (x[:32], y[:31])
  if arrays.get("shapes"):
    test = (x[32:, :10], y[32:])
  if arrays.get("dtypes"):
    test = (x[32:] / 255.0, y[32:])
  if arrays.get("float_labels"):
    train = (x[:32], y[:32].astype(float))
  if "train" in arrays:
    train, test = arrays["train"], arrays["test"]
  workdir = tmp_path / "w"
  with pytest.raises(ValueError) as error:
    capsjax.fit("quick", workdir, train=train, test=test, class_names=arrays.get("names"),
                max_steps=2, progress=False)
  assert says in str(error.value) and "\n" not in str(error.value)
  assert not workdir.exists()


def test_a_checkpoint_of_another_input_size_is_refused_by_eval(tmp_path, capsys):
  root = tmp_path / "a"
  _write_images(root, {"a": 8, "b": 8}, size=(18, 18))
  workdir = tmp_path / "w"
  assert cli.main(["train", "--dataset", f"folder:{root}", "--workdir", str(workdir),
                   *SHORT]) == 0
  other = tmp_path / "b"
  _write_images(other, {"a": 8, "b": 8}, size=(20, 20))
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(workdir), "--dataset", f"folder:{other}",
                   "--no-progress"]) == 2
  assert "takes 18x18x3 inputs" in _error(capsys)
