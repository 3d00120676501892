"""`capsjax train`, `eval`, `predict` and `rules`.

    capsjax train --config quick --data-dir ../shared/tensorflow_datasets --workdir runs/quick
    capsjax eval --workdir runs/quick --data-dir ../shared/tensorflow_datasets
    capsjax predict --workdir runs/quick digit.png scan.jpg --reconstruct out/
    capsjax rules [--plugin MODULE] [--json]     # the routing rules, their options and papers
    capsjax viz --workdir runs/quick --data-dir ../shared/tensorflow_datasets   # figures (PNG)

Bad input (missing data, unknown config or dataset, non-positive sizes, unusable workdir, a
checkpoint of another model or a damaged one, a workdir another run is training in) ends with one
line on stderr saying what was wrong and what is expected, and exit status 2. A NaN/Inf loss ends
with one line and status 1; a write to the workdir that fails (disk full, read-only, workdir
removed or unmounted) with one line and status 74 (EX_IOERR). SIGINT / SIGTERM save a checkpoint,
print the resume command and exit with 128 + the signal number.
"""

import argparse
import ast
import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path

from capsjax import __version__
from capsjax import routing as routing_lib
from capsjax.core.errors import one_line as _one_line
from capsjax.data import augment, datasets, pipeline, resize
from capsjax.infra.runtime import tune_host_allocator
from capsjax.train import archs, presets
from capsjax.viz import VIZ_EXAMPLES

EXIT_USAGE = 2
EXIT_NONFINITE = 1
EXIT_STORAGE = 74  # EX_IOERR of sysexits.h


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, no usage dump
    if message.endswith("required: command"):
      message = (f"{message} (one of {', '.join(_COMMANDS)}, predict; capsjax --help for more)")
    sys.stderr.write(f"capsjax: error: {message}\n")
    sys.exit(EXIT_USAGE)


_RECORDED_DATA_DIR = "TFDS data_dir (default: $TFDS_DATA_DIR, else the one the run recorded)"


def _build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="capsjax", description="Capsule Networks in JAX: train and evaluate.")
  parser.add_argument("--version", action="version", version=f"capsjax {__version__}")
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--verbose", action="store_true",
                      help="show the libraries' (absl, TFDS, Orbax) warning and info lines")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  t = sub.add_parser("train", help="train (or resume) a CapsNet, the baseline CNN or "
                     "Efficient-CapsNet", parents=[common])
  t.add_argument("--config", default="quick", metavar="PRESET",
                 help=f"one of {', '.join(presets.available())} (capsjax/train/presets.py; "
                      "quick, hour and *_cpu are sized for a CPU, the others for a GPU; default: "
                      "quick)")
  t.add_argument("--data-dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR, "
                 "else, resuming, the one the run recorded)")
  t.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl; resumed if present")
  t.add_argument("--dataset", default=None,
                 help=f"one of {', '.join(datasets.available('train'))}, or your own data: "
                      "tfds:NAME[:VERSION] (any TFDS image-classification set in the data dir), "
                      "folder:PATH (PATH/CLASS/*.png, or PATH/train/CLASS/... and "
                      "PATH/test/CLASS/...) (default: the preset's)")
  t.add_argument("--image-size", default=None, metavar="HxW",
                 help="tfds: and folder: sets: bring every image to HxW (default: their own "
                      "size; a folder: the most common one, printed)")
  t.add_argument("--test-fraction", type=float, default=None, metavar="F",
                 help="folder: without train/ and test/: hold out this fraction of each class "
                      "for testing (default 0.1; the same images whatever the seed)")
  t.add_argument("--arch", default=None,
                 help=f"the network: one of {', '.join(archs.available())} (default: the "
                      "preset's; capsnet: the paper's, baseline: its CNN, §5, "
                      "efficient_capsnet: Mazzia et al. 2021)")
  t.add_argument("--augmentation", default=None, metavar="NAME",
                 help=f"training augmentation of MNIST-like sets: one of "
                      f"{', '.join(augment.available())} (default: the preset's)")
  t.add_argument("--epochs", type=int, default=None)
  t.add_argument("--max-steps", type=int, default=None)
  t.add_argument("--batch-size", type=int, default=None)
  t.add_argument("--routing", default=None,
                 help="routing rule: a name from `capsjax rules` (default: the preset's), or "
                      "MODULE:NAME to import MODULE first (a plugin; recorded with the run)")
  t.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                 help="import MODULE, which registers routing rules (repeatable; recorded)")
  t.add_argument("--routing-iters", type=int, default=None)
  t.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                 help="network setting, e.g. --model digit_dim=8 (repeatable; VALUE is JSON)")
  t.add_argument("--routing-option", action="append", default=[], metavar="KEY=VALUE",
                 help="keyword option of the routing rule (repeatable), e.g. leaky=true")
  t.add_argument("--vote-chunk-size", type=int, default=None,
                 help="dynamic routing: compute votes N input capsules at a time (less memory)")
  t.add_argument("--seed", type=int, default=None)
  t.add_argument("--eval-every", type=int, default=None,
                 help="steps between full test-set evaluations (0: only at the end)")
  t.add_argument("--log-every", type=int, default=None,
                 help="steps between train-metric lines in metrics.jsonl")
  t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
  t.add_argument("--keep-checkpoints", type=int, default=None, help="how many to keep")
  t.add_argument("--pipeline", choices=pipeline.PIPELINES, default=None,
                 help="training data on the device (device), copied per chunk from the host "
                      "(host), or auto (default: device if it fits in a quarter of its memory)")
  t.add_argument("--steps-per-dispatch", type=int, default=None, metavar="K",
                 help="training steps per device dispatch (default: --log-every)")
  t.add_argument("--devices", type=int, default=None, metavar="N",
                 help="data parallelism over N local devices (default: all; the batch size "
                      "must be divisible by N)")
  t.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                 help="multi-process run: process 0's address (with --num-processes and "
                      "--process-id, given to every process)")
  t.add_argument("--num-processes", type=int, default=None, metavar="N")
  t.add_argument("--process-id", type=int, default=None, metavar="I")
  t.add_argument("--distributed", action="store_true",
                 help="multi-process run set up from SLURM, Open MPI or a Cloud TPU pod")
  t.add_argument("--coordinator-timeout", type=float, default=None, metavar="SECONDS",
                 help="how long to wait for the coordinator and the other processes "
                      "(default 300)")
  t.add_argument("--pretrained", default=None, metavar="NAME",
                 help="start from the weights of a network shipped with capsjax (e.g. "
                      "efficient_mnist, with --config efficient_mnist_cpu); recorded")
  t.add_argument("--precision", choices=list(archs.PRECISIONS), default=None,
                 help="bf16: convolutions, votes and decoder matmuls in bfloat16, the rest "
                      "float32 (default fp32)")
  t.add_argument("--train-examples", type=int, default=None,
                 help="use only the first N training examples (smoke runs)")
  t.add_argument("--test-examples", type=int, default=None,
                 help="evaluate on N test examples: the first N of a stored set, N spread "
                      "evenly over a built one (MultiMNIST: default the preset's)")
  t.add_argument("--no-progress", action="store_true", help="no progress bar")
  t.add_argument("--tensorboard", action="store_true",
                 help="also log to WORKDIR/tensorboard (needs the tensorboard extra)")
  e = sub.add_parser("eval", help="evaluate the latest checkpoint on the test examples the run "
                     "evaluated on (or --test-examples N / all); several --workdir: each "
                     "model and their ensemble (scores summed)", parents=[common])
  e.add_argument("--workdir", required=True, action="append",
                 help="the run to evaluate; repeat it for an ensemble: each run's newest "
                      "checkpoint alone and all of them together (class scores summed, as the "
                      "official code's CIFAR-10 ensemble)")
  e.add_argument("--data-dir", default=None, help=_RECORDED_DATA_DIR)
  e.add_argument("--batch-size", type=int, default=None,
                 help="default: the backend's measured best (docs/results.md)")
  e.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  e.add_argument("--dataset", default=None,
                 help=f"test set: one of {', '.join(datasets.available('test'))} (default: the "
                      "one the run trained on)")
  e.add_argument("--test-examples", default=None, metavar="N|all",
                 help="evaluate on N test examples (the first N of a stored set, N spread "
                      "evenly over a built one) or all of them (MultiMNIST: 10M pairs). "
                      "Default: the number the run recorded (TrainConfig.test_examples; none "
                      "recorded: the whole set, as the run did); with --dataset of another set, "
                      "as many as the run evaluated on its own (at most the whole other set)")
  e.add_argument("--no-progress", action="store_true", help="no progress bar")
  e.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                 help="import MODULE first (for runs that did not record their plugins)")
  r = sub.add_parser("rules", help="list the routing rules, their options and papers",
                     parents=[common])
  r.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                 help="import MODULE first, which registers routing rules (repeatable)")
  r.add_argument("--json", action="store_true", help="one JSON object instead of a table")
  p = sub.add_parser("predict", help="classify image files (digits, photos or scans of digits) "
                     "with a trained model", parents=[common])
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a training run's workdir")
  source.add_argument("--pretrained", metavar="NAME",
                      help="a network shipped with capsjax, no training needed: "
                           "efficient_mnist (Efficient-CapsNet on MNIST, no decoder)")
  p.add_argument("files", nargs="+", metavar="FILE",
                 help="PNG, JPEG, ... image files; each is made MNIST-like (background from the "
                      "border, light ink on black, contrast stretched, 20x20 box centred by "
                      "mass) and the JSON line's `converted` lists what was done")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--reconstruct", metavar="DIR", default=None,
                 help="save NAME.input.png (what the model saw) and NAME.reconstruction.png "
                      "for each FILE into DIR")
  v = sub.add_parser("viz", help="draw figures (PNG) of what a trained network learnt",
                     parents=[common])
  v.add_argument("--workdir", required=True)
  v.add_argument("--data-dir", default=None, help=_RECORDED_DATA_DIR)
  v.add_argument("--out", default=None, help="folder for the PNGs (default: WORKDIR/figures)")
  v.add_argument("--figures", default=None, metavar="NAME[,NAME...]",
                 help="some of reconstructions, perturbations, routing, confusion, curves, "
                      "multimnist (Fig. 5), samples, affnist (default: all that apply to the "
                      "run; one named that does not apply is skipped, saying why)")
  v.add_argument("--digit", type=int, default=None,
                 help="perturbations of this class only (default: one digit of each class)")
  v.add_argument("--dims", type=int, default=None,
                 help="perturb the first N capsule dimensions (default: all)")
  v.add_argument("--image", type=int, default=0, help="test index of the routing figure's image")
  v.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  v.add_argument("--test-examples", default=None, metavar="N|all",
                 help="draw from N test examples (the first N of a stored set, N spread evenly "
                      "over a built one) or all of them. Default: the number the run recorded "
                      f"(TrainConfig.test_examples; none recorded: the whole set), at most "
                      f"{VIZ_EXAMPLES:,} (a MultiMNIST run's 10M pairs: say all)")
  v.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def _viz(args) -> dict:
  from capsjax import viz

  _check_positive(args, "dims")
  figures = None if args.figures is None else [f.strip() for f in args.figures.split(",")]
  drawn = viz.render(args.workdir, args.data_dir, args.out, figures, digit=args.digit,
                     dims=args.dims, step=args.step, test_examples=_test_count(args),
                     image=args.image, progress=not args.no_progress,
                     report=lambda line: sys.stderr.write(f"capsjax: {line}\n"))
  return {"figures": drawn}


def _train(args) -> dict:
  from capsjax import api
  from capsjax.infra import distributed
  from capsjax.train import presets

  config = presets.get(args.config)
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         auto=args.distributed,
                         timeout_s=(distributed.DEFAULT_TIMEOUT_S if args.coordinator_timeout
                                    is None else args.coordinator_timeout))
  overrides = {"dataset": args.dataset, "arch": args.arch, "augmentation": args.augmentation,
               "epochs": args.epochs,
               "max_steps": args.max_steps, "batch_size": args.batch_size,
               "routing": args.routing, "routing_iters": args.routing_iters,
               "vote_chunk_size": args.vote_chunk_size, "seed": args.seed,
               "eval_every": args.eval_every, "log_every": args.log_every,
               "checkpoint_every": args.checkpoint_every,
               "keep_checkpoints": args.keep_checkpoints, "pipeline": args.pipeline,
               "steps_per_dispatch": args.steps_per_dispatch, "precision": args.precision,
               "devices": args.devices, "pretrained": args.pretrained,
               "test_fraction": args.test_fraction}
  overrides = {k: v for k, v in overrides.items() if v is not None}
  if args.image_size is not None:
    overrides["image_size"] = list(resize.parse_size(args.image_size))
  if args.model:
    overrides["model"] = {**config.model, **_key_values(args.model, "--model", "digit_dim=8")}
  if args.plugin:
    overrides["plugins"] = [*config.plugins, *args.plugin]
  if args.routing_option:
    overrides["routing_options"] = _key_values(args.routing_option, "--routing-option",
                                               "leaky=true")
  _check_positive(args, "train_examples", "test_examples")
  return api.fit(config, args.workdir, args.data_dir, progress=not args.no_progress,
                 tensorboard=args.tensorboard, train_examples=args.train_examples,
                 test_examples=args.test_examples, **overrides)


def _key_values(items: list[str], flag: str, example: str) -> dict:
  """["digit_dim=8", "decoder_hidden=[64,128]", "leaky=True"] -> {"digit_dim": 8, ...}.

  VALUE is JSON or a Python literal (so true and True both work; a string needs quotes).
  """
  parsed = {}
  for text in items:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
      raise ValueError(f"{flag} expects KEY=VALUE (e.g. {example}), got {text!r}; KEY must be a "
                       "Python identifier.")
    try:
      parsed[key] = json.loads(value)
    except ValueError:
      try:
        parsed[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        raise ValueError(f"{flag} {key}: VALUE must be JSON or a Python literal (a number, true, "
                         f"a list such as [64,128], a quoted string), got {value!r}.") from None
  return parsed


def _check_positive(args, *names: str) -> None:
  for name in names:
    value = getattr(args, name)
    if value is not None and value <= 0:
      raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")


def _test_count(args) -> int | str | None:
  """eval's and viz's --test-examples: a positive integer, "all", or None (not given)."""
  text = args.test_examples
  if text is None or text == "all":
    return text
  try:
    count = int(text)
  except ValueError:
    count = 0
  if count <= 0:
    raise ValueError(f"--test-examples must be a positive integer or 'all', got {text!r}.")
  return count


def _eval(args) -> dict:
  from capsjax.train import evaluate

  _check_positive(args, "batch_size")
  count = _test_count(args)
  if args.dataset is not None:
    datasets.get(args.dataset, "test")
  routing_lib.load_plugins(args.plugin)  # those the run recorded are imported when it loads
  if len(args.workdir) > 1:
    if args.step is not None:
      raise ValueError("--step picks a checkpoint of one run; an ensemble evaluates each run's "
                       "newest checkpoint.")
    return evaluate.evaluate_ensemble(args.workdir, args.dataset, args.data_dir, count,
                                      args.batch_size, progress=not args.no_progress)
  return evaluate.evaluate_checkpoint(args.workdir[0], args.dataset, args.data_dir, count,
                                      args.batch_size,
                                       progress=not args.no_progress, step=args.step)


def _predict(args) -> int:
  """One JSON line per file on stdout; one error line per bad file on stderr (the other files
  are still classified); exit status 2 if any file failed.

  Each file is converted by `TrainedModel.read_image` (what `TrainedModel.predict` does with a
  path); the converted files are classified together, up to the model's batch size at a time."""
  import numpy as np

  from capsjax import api, images
  from capsjax.nn.inputs import to_float

  if args.pretrained is not None and args.step is not None:
    raise ValueError("--step picks a checkpoint of --workdir; a --pretrained model has no "
                     "checkpoints to choose from.")
  model = (api.load_pretrained(args.pretrained) if args.pretrained is not None
           else api.load(args.workdir, args.step))
  source = args.workdir if args.pretrained is None else f"pretrained {args.pretrained}"
  out_dir = None
  if args.reconstruct:
    out_dir = Path(args.reconstruct)
    if out_dir.exists() and not out_dir.is_dir():
      raise ValueError(f"--reconstruct {str(out_dir)!r} exists and is not a directory.")
    if model.predict(np.zeros(model.picture_shape, np.uint8)).reconstructions is None:
      raise ValueError(f"--reconstruct: the network of {source!r} (arch {model.arch.name!r}) "
                       "has no decoder, so there is nothing to reconstruct.")
    out_dir.mkdir(parents=True, exist_ok=True)
  failed, stems = 0, set()

  def classify(batch: list) -> None:  # [(name, image, done)], one compiled batch at most
    if not batch:
      return
    pred = model.predict(np.stack([image for _, image, _ in batch]))
    for i, (name, image, done) in enumerate(batch):
      record = {"file": name, "class": int(pred.classes[i]),
                "class_name": model.class_name(int(pred.classes[i])),
                "scores": [round(float(x), 6) for x in pred.scores[i]],
                "confident": bool(pred.confident[i]), "converted": done, "step": model.step}
      if out_dir is not None:
        stem = Path(name).stem
        if stem in stems:  # photo7.png and photo7.jpg: photo7, photo7.jpg (no file overwritten)
          stem = Path(name).name
        stems.add(stem)
        images.write_image(out_dir / f"{stem}.input.png", to_float(image))
        images.write_image(out_dir / f"{stem}.reconstruction.png", pred.reconstructions[i])
        record["reconstruction"] = str(out_dir / f"{stem}.reconstruction.png")
      print(json.dumps(record), flush=True)
    batch.clear()

  batch = []
  for name in args.files:
    try:
      image, done = model.read_image(name)  # what TrainedModel.predict does with a path
    except ValueError as e:
      sys.stderr.write(f"capsjax: error: {_one_line(e)}\n")
      failed += 1
      continue
    batch.append((name, image, done))
    if len(batch) == model.batch_size:
      classify(batch)
  classify(batch)
  return EXIT_USAGE if failed else 0


def _rules(args) -> dict | str:
  """{"rules": {name: routing.describe(name)}} with --json, else a table (one row per rule)."""
  routing_lib.load_plugins(args.plugin)
  rules = {name: routing_lib.describe(name) for name in routing_lib.available()}
  if args.json:
    return {"rules": rules}
  show = lambda value: json.dumps(value) if isinstance(value, str) else repr(value)
  rows = [("rule", "iterative", "options (default)", "learnable parameters", "from", "paper")]
  for name, rule in rules.items():
    options = ", ".join(f"{k}={show(v)}" for k, v in rule["options"].items())
    params = ", ".join(f"{k} [{', '.join(map(str, shape))}]"
                       for k, shape in rule["parameters"].items())
    rows.append((name, "yes" if rule["iterative"] else "one pass", options or "-",
                 params or "-", rule["source"], rule["paper"] or "-"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
  return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]])
                   for row in rows)


_COMMANDS = {"train": _train, "eval": _eval, "rules": _rules, "viz": _viz}


class _Stdout:
  """sys.stdout for a command: once its reader has gone (`capsjax rules --json | head -c 10`),
  output is dropped instead of raising BrokenPipeError, so nothing ends in a traceback and a
  training run whose reader left still finishes and saves its checkpoints."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    try:
      return self._stream.write(text)
    except BrokenPipeError:
      self._gone()
      return len(text)

  def flush(self) -> None:
    try:
      self._stream.flush()
    except BrokenPipeError:
      self._gone()

  def _gone(self) -> None:
    # Later writes, and the interpreter's own flush at exit, go to /dev/null.
    try:
      os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's captured stream)
      pass

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _duration(seconds: float) -> str:
  """'6 min 12 s', '42 s', '1 h 3 min'."""
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _trained_sentence(workdir: str, result: dict) -> str:
  """The human line after `train`'s JSON: the result, where the checkpoint is, what to try."""
  spent = (f" ({_duration(result['train_seconds'])} of training)"
           if result.get("train_seconds") else "")
  quoted = shlex.quote(workdir)
  return (f"capsjax: test accuracy {result['test_accuracy']:.2%} on "
          f"{result['test_examples']:,} test examples at step {result['step']:,}{spent}; "
          f"checkpoint in {Path(workdir) / 'checkpoints'}. Next: capsjax eval --workdir "
          f"{quoted}, capsjax viz --workdir {quoted}, capsjax predict --workdir {quoted} "
          "IMAGE.png")


def _warn_in_one_line() -> None:
  """Shows a RoutingPluginWarning (a broken installed plugin) as one `capsjax: warning:` line."""
  show = warnings.showwarning
  if getattr(show, "capsjax_one_line", False):
    return

  def one_line(message, category, *args, **kwargs):
    if issubclass(category, routing_lib.RoutingPluginWarning):
      sys.stderr.write(f"capsjax: warning: {_one_line(message)}\n")
    else:
      show(message, category, *args, **kwargs)

  one_line.capsjax_one_line = True
  warnings.showwarning = one_line


def main(argv=None) -> int:
  """Runs one `capsjax` command and returns its exit status (the module docstring lists them).

  Errors become one `capsjax: error: ...` line on stderr, not a traceback; the result (a JSON
  object, or `rules`' table) is printed on stdout by process 0.

  Args:
    argv: the arguments after the program name; None: `sys.argv[1:]`.

  Returns:
    0 on success, 2 (EXIT_USAGE) for bad input (or any unreadable file of `predict`), 1
      (EXIT_NONFINITE) for a NaN/Inf loss, 74 (EXIT_STORAGE) for a failed write to the workdir,
      128 + the signal number after SIGINT or SIGTERM (a checkpoint saved), 130 for a
      KeyboardInterrupt. Output to a reader that has gone (`| head`) is dropped, not an error.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _build_parser().parse_args(argv)
  if not args.verbose:
    # Library warnings through absl (TFDS's "OpenCV is not installed ..." on every run, Orbax's
    # notes) say nothing a user can act on; errors still show.
    logging.getLogger("absl").setLevel(logging.ERROR)
  tune_host_allocator()  # before JAX starts a backend; the CPU only
  _warn_in_one_line()
  stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
  try:
    return _run(args, argv)
  finally:
    sys.stdout.flush()
    sys.stdout = stdout


def _run(args, argv: list[str]) -> int:
  """`main` after the parsing: the command, its errors as one line each, its result."""
  from capsjax.infra.checkpoint import NonFiniteError
  from capsjax.infra.interrupt import TrainingInterrupted
  from capsjax.infra.workdir import StorageError

  try:
    if args.command == "predict":
      return _predict(args)  # prints a line per file itself
    result = _COMMANDS[args.command](args)
  except ValueError as e:
    sys.stderr.write(f"capsjax: error: {_one_line(e)}\n")
    return EXIT_USAGE
  except NonFiniteError as e:
    sys.stderr.write(f"capsjax: error: {_one_line(e)}\n")
    return EXIT_NONFINITE
  except StorageError as e:
    sys.stderr.write(f"capsjax: error: {_one_line(e)}\n")
    return EXIT_STORAGE
  except TrainingInterrupted as e:
    sys.stderr.write(f"capsjax: {e}. Resume with: {shlex.join(['capsjax', *argv])}\n")
    return e.exit_code
  except KeyboardInterrupt:
    sys.stderr.write("capsjax: interrupted\n")
    return 130
  jax = sys.modules.get("jax")
  if jax is None or jax.process_index() == 0:  # a multi-process run reports once
    print(result if isinstance(result, str) else json.dumps(result, default=repr))
    if args.command == "train":
      sys.stdout.flush()  # the JSON line first, then the sentence for people
      sys.stderr.write(_trained_sentence(args.workdir, result) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
