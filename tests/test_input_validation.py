"""Bad input at the API (`data.check_batch`, `data.Split`, `data.load_split`) and at the CLI:
one clear line each, exit status 2, no traceback."""

import json
import re

import numpy as np
import pytest

from capsjax import cli, data
from conftest import copy_of_mnist

rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
FLOATS = IMAGES.astype(np.float32) / 255
LABELS = np.array([0, 3, 9, 1], np.int32)


def _with(array, index, value):
  out = array.copy()
  out[index] = value
  return out


# name: (images, labels, num_classes, message)
BAD_BATCHES = {
    "NaN pixel": (_with(FLOATS, (1, 5, 5, 0), np.nan), LABELS, 10,
                  "images contain 1 NaN and 0 Inf values; expected finite values in [0, 1]."),
    "+Inf pixel": (_with(FLOATS, (0, 0, 0, 0), np.inf), LABELS, 10, "0 NaN and 1 Inf values"),
    "-Inf pixel": (_with(FLOATS, (3, 2, 1, 0), -np.inf), LABELS, 10, "0 NaN and 1 Inf values"),
    "float 0..255": (IMAGES.astype(np.float32), LABELS, 10,
                     "float images must lie in [0, 1], got values from 0 to 255 (pass uint8 for "
                     "0..255)."),
    "negative float": (_with(FLOATS, (2, 0, 0, 0), -0.5), LABELS, 10,
                       "float images must lie in [0, 1], got values from -0.5"),
    "int32 images": (IMAGES.astype(np.int32), LABELS, 10,
                     "images must be uint8 (0..255) or floating point in [0, 1], got dtype int32."),
    "bool images": (IMAGES > 128, LABELS, 10, "got dtype bool."),
    "HWC image, no batch": (IMAGES[0], LABELS[:1], 10,
                            "images must have shape [B, H, W, C], got shape (28, 28, 1)."),
    "empty batch": (IMAGES[:0], LABELS[:0], 10,
                    "empty batch: images holds 0 examples; expected at least one."),
    "label = num_classes": (IMAGES, _with(LABELS, 2, 10), 10,
                            "labels must lie in [0, 9], got values from 0 to 10."),
    "negative label": (IMAGES, _with(LABELS, 0, -1), 10, "got values from -1 to 9."),
    "float labels": (IMAGES, LABELS.astype(np.float32), 10,
                     "labels must be integers, got dtype float32."),
    "too few labels": (IMAGES, LABELS[:3], 10,
                       "labels must have shape [4] (one class index per image), got shape (3,)."),
    "one-hot labels": (IMAGES, np.eye(10, dtype=np.int32)[LABELS], 10, "got shape (4, 10)."),
    "one class": (IMAGES, LABELS * 0, 1, "num_classes must be an integer >= 2, got 1."),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batch_is_rejected_with_one_line(case):
  images, labels, num_classes, message = BAD_BATCHES[case]
  with pytest.raises(ValueError) as info:
    data.check_batch(images, labels, num_classes)
  assert message in str(info.value) and "\n" not in str(info.value)
  with pytest.raises(ValueError, match="^" + re.escape(str(info.value)) + "$"):
    data.Split(np.asarray(images), np.asarray(labels), num_classes)  # checked on construction


def test_good_batches_pass():
  data.check_batch(IMAGES, LABELS, 10)
  data.check_batch(FLOATS.astype(np.float64), LABELS.astype(np.int64), 10)
  data.check_batch(np.ones((1, 28, 28, 1), np.float32), np.array([9]), 10)


def _bad_data_dir(case, tmp_path, data_dir):
  """A data_dir with one defect; returns its path."""
  root = tmp_path / case.replace(" ", "_")
  if case == "random files":
    root.mkdir()
    (root / "notes.txt").write_text("not a dataset")
    (root / "mnist").mkdir()
    (root / "mnist" / "image.png").write_bytes(b"\x89PNG")
    return root
  version = copy_of_mnist(data_dir, root)
  info_path, features_path = version / "dataset_info.json", version / "features.json"
  if case == "example count":
    info = json.loads(info_path.read_text())
    info["splits"][0]["shardLengths"] = ["60010"]  # the train split's file holds 60000
    info_path.write_text(json.dumps(info))
  elif case == "class count":
    features = json.loads(features_path.read_text())
    features["featuresDict"]["features"]["label"]["classLabel"]["numClasses"] = "5"
    features_path.write_text(json.dumps(features))
  elif case == "garbled dataset_info":
    info_path.write_text('{"name": "mnist", "splits": [')
  elif case == "missing records":
    (version / "mnist-train.array_record-00000-of-00001").unlink()
  return root


BAD_DATA_DIRS = {
    "random files": "is not a TFDS data_dir: it has no DATASET/VERSION/dataset_info.json (found: "
                    "mnist, notes.txt).",
    "example count": "could not read 'mnist' split 'train' in '{root}': dataset_info.json declares "
                     "60010 examples but the files hold 60000.",
    "class count": "'mnist' split 'train' in '{root}' does not match its dataset_info (5 classes): "
                   "labels must lie in [0, 4], got values from 0 to 9.",
    "garbled dataset_info": "could not read 'mnist' split 'train' in '{root}':",
    "missing records": "could not read 'mnist' split 'train' in '{root}':",
}


@pytest.mark.parametrize("case", sorted(BAD_DATA_DIRS))
def test_bad_data_dir_api(case, tmp_path, data_dir):
  root = _bad_data_dir(case, tmp_path, data_dir)
  with pytest.raises(ValueError) as info:
    data.load_split("mnist", "train", root, limit=64)
  assert BAD_DATA_DIRS[case].format(root=root) in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_DATA_DIRS))
def test_bad_data_dir_cli(case, tmp_path, data_dir, capsys):
  root = _bad_data_dir(case, tmp_path, data_dir)
  code = cli.main(["train", "--data-dir", str(root), "--workdir", str(tmp_path / "w"),
                   "--max-steps", "1", "--batch-size", "8", "--train-examples", "64",
                   "--test-examples", "64",
                   "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  assert err.startswith("capsjax: error: ")
  assert BAD_DATA_DIRS[case].format(root=root) in err
