"""`capsjax predict` on photos of digits: MNIST test digits rendered as photos, classified
through the command's own path, against the same digits as clean MNIST images.

    python benchmarks/photo_predict.py --workdir runs/quick_layout \
        --data-dir ../shared/tensorflow_datasets

Takes `--examples` MNIST test digits (a fixed selection: every (10,000 / N)-th) and renders each
as a "photo" made here (`render_photo`): dark ink (black, blue pen or pencil) on tinted paper,
dim and unevenly lit (a gradient and vignetting), rotated by up to 8 degrees, on a 64x64 or
100x100 canvas at 30-75% of its height, off centre, blurred, with noise, saved as PNG (even
indices) or JPEG (odd). Then classifies, with the checkpoint of `--workdir`:

- the clean digits as arrays (what `capsjax eval` sees),
- the clean digits saved as 28x28 PNGs, through `capsjax predict` (`capsjax.cli.main`, in this
  process),
- the photos through `capsjax predict`,
- the photos and the clean PNGs with the conversion of `capsjax/images.py` as it was before
  photos were handled (`git show OLD:capsjax/images.py`, `--old-commit`; skipped with a note
  where git or that commit is not available) and `TrainedModel.predict`.

Prints each accuracy and confident fraction (`Prediction.confident`), how the confident flag
would change with other gaps between the top two scores, and a JSON object as the last line.
`--figure` saves 8 photos above what the network saw of them (the converted 28x28 inputs) with
the true and predicted class.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

import capsjax
from capsjax import cli, data
from capsjax.api import Prediction
from capsjax.infra.runtime import tune_host_allocator

REPO = Path(__file__).resolve().parent.parent
OLD_COMMIT = "c6e95ef34c86f3a391a8a4d75cf5f71a9623f3e5"  # images.py before photos were handled
PAPERS = [(1.0, 0.93, 0.78), (0.86, 0.92, 1.0), (0.95, 0.95, 0.95), (0.9, 1.0, 0.86),
          (1.0, 0.88, 0.9)]  # cream, bluish, white, greenish, pink
INKS = [(0.08, 0.08, 0.1), (0.12, 0.16, 0.55), (0.35, 0.35, 0.38)]  # black, blue pen, pencil


def render_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """A uint8 [28, 28] MNIST digit (light on black) as an RGB "photo" of it written on paper."""
  canvas = int(rng.choice([64, 100]))
  scale = canvas * rng.uniform(0.3, 0.75) / 20  # MNIST's 20-pixel box to 30-75% of the height
  size = round(28 * scale)
  cover = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
  cover = cover.rotate(rng.uniform(-8, 8), Image.Resampling.BICUBIC, fillcolor=0)
  cover = np.asarray(cover, np.float64) / 255
  free = max(0.0, (canvas - 20 * scale) / 2 - 2)
  top = int(round((canvas - size) / 2 + rng.uniform(-free, free)))
  left = int(round((canvas - size) / 2 + rng.uniform(-free, free)))
  coverage = np.zeros((canvas, canvas))
  y0, x0, y1, x1 = max(0, top), max(0, left), min(canvas, top + size), min(canvas, left + size)
  coverage[y0:y1, x0:x1] = cover[y0 - top:y1 - top, x0 - left:x1 - left]
  paper = np.array(PAPERS[rng.integers(len(PAPERS))]) * rng.uniform(0.85, 1.0)
  ink = np.array(INKS[rng.integers(len(INKS))])
  reflectance = paper * (1 - coverage[..., None]) + ink * coverage[..., None]
  y, x = np.mgrid[-1:1:canvas * 1j, -1:1:canvas * 1j]
  angle = rng.uniform(0, 2 * np.pi)
  light = (rng.uniform(0.45, 0.85) * (1 + rng.uniform(0, 0.3) * (np.cos(angle) * x +
                                                                  np.sin(angle) * y))
           * (1 - rng.uniform(0, 0.3) * (x * x + y * y) / 2))
  photo = 255 * light[..., None] * reflectance
  photo = ndimage.gaussian_filter(photo, (rng.uniform(0.4, 1.2) * canvas / 64,) * 2 + (0,))
  photo = photo + rng.normal(0, rng.uniform(2, 6), photo.shape)
  return Image.fromarray(np.clip(photo.round(), 0, 255).astype(np.uint8))


def predict_command(workdir: str, files: list[Path]) -> list[dict]:
  """`capsjax predict --workdir WORKDIR FILE...` in this process: its JSON lines."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(["predict", "--workdir", workdir, *map(str, files)])
  if code != 0:
    raise SystemExit(f"capsjax predict failed ({code}): {err.getvalue()[-2000:]}")
  return [json.loads(line) for line in out.getvalue().splitlines()]


def old_conversion(commit: str):
  """`capsjax/images.py` of `commit` as a module, or None (with the reason) when unavailable."""
  try:
    source = subprocess.run(["git", "show", f"{commit}:capsjax/images.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    return None, f"git show {commit[:7]}:capsjax/images.py failed ({e})"
  spec = importlib.util.spec_from_loader("capsjax_images_old", loader=None)
  module = importlib.util.module_from_spec(spec)
  exec(compile(source, f"{commit[:7]}:capsjax/images.py", "exec"), module.__dict__)
  return module, None


def summary(classes, scores, labels) -> dict:
  """Accuracy, confident fraction and the accuracy of the confident / unconfident ones."""
  classes, labels = np.asarray(classes), np.asarray(labels)
  scores = np.asarray(scores)
  confident = Prediction(classes, scores, None, None).confident
  right = classes == labels
  return {"accuracy": float(right.mean()), "confident": float(confident.mean()),
          "accuracy_confident": float(right[confident].mean()) if confident.any() else None,
          "accuracy_unconfident": float(right[~confident].mean()) if (~confident).any() else None}


def confidence_sweep(scores, labels, tops=(0.5, 0.7, 0.9), gaps=(0.2, 0.3, 0.5)) -> dict:
  """For each (top, gap): the fraction that would be confident (top score >= top, the top two
  scores >= gap apart), their accuracy, and how many of the wrong answers were not confident."""
  scores = np.asarray(scores)
  top2 = np.sort(scores, -1)[:, ::-1][:, :2]
  right = scores.argmax(-1) == np.asarray(labels)
  out = {}
  for top in tops:
    for gap in gaps:
      ok = (top2[:, 0] >= top) & (top2[:, 0] - top2[:, 1] >= gap)
      out[f"{top}/{gap}"] = {
          "confident": round(float(ok.mean()), 4),
          "accuracy_confident": round(float(right[ok].mean()), 4) if ok.any() else None,
          "wrong_flagged": f"{int((~right & ~ok).sum())}/{int((~right).sum())}"}
  return out


def figure(path: Path, photos: list[Path], inputs: np.ndarray, labels, classes, confident):
  """8 photos (top) above the converted 28x28 inputs (bottom), true / predicted class below."""
  cell, pad, text = 112, 6, 16
  n = len(photos)
  sheet = Image.new("RGB", (n * (cell + pad) + pad, 2 * (cell + pad) + pad + text), "white")
  draw = ImageDraw.Draw(sheet)
  for i, file in enumerate(photos):
    x = pad + i * (cell + pad)
    with Image.open(file) as photo:
      sheet.paste(photo.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC), (x, pad))
    seen = Image.fromarray(inputs[i, ..., 0]).resize((cell, cell), Image.Resampling.NEAREST)
    sheet.paste(seen.convert("RGB"), (x, 2 * pad + cell))
    mark = "" if confident[i] else "?"
    draw.text((x + 2, 3 * pad + 2 * cell - 4),
              f"true {labels[i]}  said {classes[i]}{mark}",
              fill="black" if labels[i] == classes[i] else "red")
  path.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(path)


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a trained MNIST run (e.g. runs/quick)")
  p.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR)")
  p.add_argument("--examples", type=int, default=500, help="MNIST test digits (>= 1)")
  p.add_argument("--seed", type=int, default=0, help="the renderings' random seed")
  p.add_argument("--out", default=None, help="folder for the image files (default: a temporary "
                                             "one, removed at the end)")
  p.add_argument("--figure", default=None, help="save 8 example photos to this PNG")
  p.add_argument("--old-commit", default=OLD_COMMIT,
                 help="the commit whose capsjax/images.py is the old conversion ('' to skip)")
  args = p.parse_args(argv)
  if not 1 <= args.examples <= 10000:
    p.error("--examples must be 1..10000")
  start = time.perf_counter()
  test = data.load_split("mnist", "test", args.data_dir)
  picked = np.arange(args.examples) * (len(test.labels) // args.examples)
  digits, labels = test.images[picked], test.labels[picked]
  rng = np.random.default_rng(args.seed)
  with tempfile.TemporaryDirectory() as scratch:
    folder = Path(args.out or scratch)
    folder.mkdir(parents=True, exist_ok=True)
    clean_files, photo_files = [], []
    for i, (digit, label) in enumerate(zip(digits, labels)):
      clean = folder / f"clean_{picked[i]:05d}_{label}.png"
      Image.fromarray(digit[..., 0]).save(clean)
      photo = render_photo(digit[..., 0], rng)
      if i % 2:
        photo_file = folder / f"photo_{picked[i]:05d}_{label}.jpg"
        photo.save(photo_file, quality=int(rng.integers(70, 91)))
      else:
        photo_file = folder / f"photo_{picked[i]:05d}_{label}.png"
        photo.save(photo_file)
      clean_files.append(clean)
      photo_files.append(photo_file)
    rendered = time.perf_counter()

    model = capsjax.load(args.workdir)
    results = {}
    as_arrays = model.predict(digits)
    results["clean_arrays"] = summary(as_arrays.classes, as_arrays.scores, labels)
    for key, files in (("clean_predict", clean_files), ("photo_predict", photo_files)):
      records = predict_command(args.workdir, files)
      assert [r["file"] for r in records] == list(map(str, files))
      results[key] = summary([r["class"] for r in records], [r["scores"] for r in records],
                             labels)
      assert results[key]["confident"] == np.mean([r["confident"] for r in records])
      results[key]["steps"] = _step_counts(records)
      if key == "photo_predict":
        photo_scores = np.array([r["scores"] for r in records])
    old, why_not = old_conversion(args.old_commit) if args.old_commit else (None, "skipped")
    if old is not None:
      for key, files in (("clean_old", clean_files), ("photo_old", photo_files)):
        batch = np.stack([old.read_image(f, model.input_shape)[0] for f in files])
        pred = model.predict(batch)
        results[key] = summary(pred.classes, pred.scores, labels)
    else:
      print(f"old conversion: not measured: {why_not}", file=sys.stderr)
    if args.figure:
      shown = list(range(min(8, args.examples)))
      seen = np.stack([model.read_image(photo_files[i])[0] for i in shown])
      pred = model.predict(seen)
      figure(Path(args.figure), [photo_files[i] for i in shown], seen, labels[shown],
             pred.classes, pred.confident)
  done = time.perf_counter()

  print(f"{args.examples} MNIST test digits (every {len(test.labels) // args.examples}th), "
        f"checkpoint step {model.step} of {args.workdir}")
  for key, title in (("clean_arrays", "clean, as arrays (eval)"),
                     ("clean_predict", "clean 28x28 PNGs, capsjax predict"),
                     ("photo_predict", "photos, capsjax predict"),
                     ("clean_old", "clean PNGs, old conversion"),
                     ("photo_old", "photos, old conversion")):
    if key in results:
      r = results[key]
      print(f"  {title:36s} accuracy {r['accuracy']:.2%}  confident {r['confident']:.1%}  "
            f"(accuracy confident {_pct(r['accuracy_confident'])}, unconfident "
            f"{_pct(r['accuracy_unconfident'])})")
  sweeps = {"clean": confidence_sweep(as_arrays.scores, labels),
            "photo": confidence_sweep(photo_scores, labels)}
  for kind, sweep in sweeps.items():
    print(f"  {kind}: confident if top >= t and gap >= g: fraction / their accuracy / wrong ones "
          "not confident: " + ", ".join(f"{k}: {v['confident']:.1%} / "
                                        f"{_pct(v['accuracy_confident'])} / {v['wrong_flagged']}"
                                        for k, v in sweep.items()))
  print(json.dumps({"examples": args.examples, "seed": args.seed, "step": model.step,
                    "workdir": args.workdir, "old_commit": args.old_commit[:7] if old else None,
                    **results, "confidence_sweep": sweeps,
                    "render_s": round(rendered - start, 1),
                    "classify_s": round(done - rendered, 1)}))


def _pct(x) -> str:
  return "-" if x is None else f"{x:.1%}"


def _step_counts(records) -> dict:
  """How many files went through each kind of conversion step (its text up to a bracket)."""
  counts = {}
  for r in records:
    for step in r["converted"]:
      kind = step.split(" (")[0].split(" by ")[0].lstrip("0123456789 ").replace("speck of",
                                                                                "specks of")
      counts[kind] = counts.get(kind, 0) + 1
  return counts


if __name__ == "__main__":
  main()
