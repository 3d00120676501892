"""The JSON side of benchmarks/gpu_suite.sh: env probe, stage records, parsing, summary.

    python3 benchmarks/gpu_suite_report.py env [--manifest .gpu/manifest.json] [--need-gpu]
    python3 benchmarks/gpu_suite_report.py record JSON STAGE --seconds S [--part NAME RC OUT ERR]
        [--status S] [--reason TEXT] [--parse last|tests|paper] [--meta KEY=VALUE]
    python3 benchmarks/gpu_suite_report.py summary JSON

`record` merges one stage into JSON ({"stages": {name: {"status", "seconds", "result"}},
"device", "date"}), written atomically. A stage's status comes from its parts' exit codes unless
--status is given: 124/137 (timeout's) make it "timeout", another non-zero code "failed". Each
part's result is the last JSON-object line of its stdout. `env` prints one JSON line and exits
1 if the data code cannot run here (or, with --need-gpu, JAX sees no GPU). Standard library only
(`env` imports the packages it reports on).
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

TIMEOUT_CODES = (124, 137)  # timeout(1): timed out; killed after its -k grace
TAIL_LINES = 6
MAX_LINE = 8000  # characters of the summary's JSON line


def last_json(path: Path) -> dict | None:
  """The last line of `path` that is a JSON object, or None."""
  try:
    lines = path.read_text(errors="replace").splitlines()
  except OSError:
    return None
  for line in reversed(lines):
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
      try:
        value = json.loads(line)
      except ValueError:
        continue
      if isinstance(value, dict):
        return value
  return None


def tail(path: Path, n: int = TAIL_LINES) -> list[str]:
  try:
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
  except OSError:
    return []
  return [line[:300] for line in lines if line.strip()][-n:]


# pytest's closing line, e.g. "3 failed, 250 passed, 4 skipped, 1 deselected in 99.1s".
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)")
_PROGRESS = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?$")


def parse_pytest(out: Path) -> dict:
  """Counts and failing test ids from pytest -q -rfE output (counted from the progress dots
  when the closing line is missing, i.e. pytest was stopped)."""
  text = out.read_text(errors="replace") if out.exists() else ""
  lines = text.splitlines()
  counts: dict[str, int] = {}
  closing = None
  for line in reversed(lines):
    if " in " in line and _COUNT.search(line) and ("passed" in line or "failed" in line
                                                   or "error" in line or "skipped" in line):
      closing = line.strip("= ")
      break
  if closing:
    for n, word in _COUNT.findall(closing.split(" in ")[0]):
      key = {"error": "errors", "warning": "warnings"}.get(word, word)
      counts[key] = counts.get(key, 0) + int(n)
  else:  # stopped before the end: count the progress characters
    marks = "".join(m.group(1) for m in map(_PROGRESS.match, lines) if m)
    counts = {"passed": marks.count("."), "failed": marks.count("F"), "errors": marks.count("E"),
              "skipped": marks.count("s"), "xfailed": marks.count("x"), "xpassed": marks.count("X")}
    counts = {k: v for k, v in counts.items() if v}
  interrupted = "KeyboardInterrupt" in text or "Interrupted:" in text
  failing = []
  for line in lines:
    m = re.match(r"^(FAILED|ERROR) (\S+)", line)
    if m and m.group(2) not in failing:
      failing.append(m.group(2))
  return {**{k: counts.get(k, 0) for k in ("passed", "failed", "skipped")},
          **{k: v for k, v in counts.items() if k not in ("passed", "failed", "skipped")},
          "complete": closing is not None and not interrupted, "closing_line": closing,
          "failing": failing}


def parse_paper(parts: dict[str, dict], workdir: Path | None, minutes: float,
                epoch_images: int | None = None) -> dict:
  """Steps reached, test accuracy and speed of the paper run from its train and eval parts;
  seconds per epoch = `epoch_images` / the median images/s of its train records (the first,
  which holds the compilation, left out)."""
  result: dict = {"minutes": minutes}
  train, ev = parts.get("paper_train"), parts.get("paper_eval")
  if train is not None:
    result["train_rc"] = train["rc"]
    err = Path(train["err"]).read_text(errors="replace") if Path(train["err"]).exists() else ""
    m = re.search(r"interrupted by (\w+) after step (\d+)", err)
    if m:
      result["interrupted_by"], result["steps"] = m.group(1), int(m.group(2))
    final = last_json(Path(train["out"]))
    if final is not None:  # trained to the end before the time was up
      result["steps"] = final.get("step")
      result["final"] = final
  records = []
  if workdir is not None and (workdir / "metrics.jsonl").exists():
    for line in (workdir / "metrics.jsonl").read_text(errors="replace").splitlines():
      try:
        records.append(json.loads(line))
      except ValueError:
        pass
  trains = [r for r in records if r.get("split") == "train"]
  if trains:
    last = trains[-1]
    result["last_train_record"] = {k: last.get(k) for k in (
        "step", "loss", "train_accuracy", "images_per_sec", "elapsed_s")}
    rates = [r["images_per_sec"] for r in trains[1:] if "images_per_sec" in r]  # 1st: compile
    if rates:
      result["images_per_sec_median"] = sorted(rates)[len(rates) // 2]
      if epoch_images:
        result["seconds_per_epoch"] = epoch_images / result["images_per_sec_median"]
  tests = [r for r in records if r.get("split") == "test"]
  if tests:
    result["periodic_test_accuracy"] = {r["step"]: r.get("test_accuracy") for r in tests}
  if ev is not None:
    result["eval_rc"] = ev["rc"]
    got = last_json(Path(ev["out"]))
    if got is not None:
      result["test_accuracy"] = got.get("test_accuracy")
      result["eval_step"] = got.get("step")
      result["test_examples"] = got.get("test_examples")
      result.setdefault("steps", got.get("step"))
  return result


def parse_routing(path: Path) -> dict:
  """routing_cost.json in brief: one [rule, pass, iters, batch, n_in, median_ms] row per point."""
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    return {"rows_error": f"{path}: {e}"}
  rows = [[r["rule"], r["pass"], r["iters"], r["batch"], r["n_in"], round(r["median_ms"], 3)]
          for r in data.get("rows", [])]
  return {"points": len(rows), "columns": ["rule", "pass", "iters", "batch", "n_in", "median_ms"],
          "rows": rows, "meta": data.get("meta")}


def load(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {"stages": {}}


def save(path: Path, data: dict) -> None:
  data["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=1, default=repr) + "\n")
  os.replace(tmp, path)


def record(args) -> None:
  if args.stage == "-":  # top-level keys only
    data = load(args.json)
    _set_keys(data, args.top)
    save(args.json, data)
    return
  parts = {}
  for name, rc, out, err in args.part:
    parts[name] = {"rc": int(rc), "out": out, "err": err}
  status = args.status
  if status is None:
    rcs = [p["rc"] for p in parts.values()]
    allowed = {name: {int(c) for c in codes.split(",")}
               for name, codes in (a.split("=", 1) for a in args.ok_rc)}
    bad = [p["rc"] for n, p in parts.items() if p["rc"] not in allowed.get(n, {0}) | {0}]
    status = ("timeout" if any(rc in TIMEOUT_CODES for rc in bad) else
              "failed" if bad or not rcs else "ok")
  result: dict = {}
  if args.parse == "tests" and parts:
    part = next(iter(parts.values()))
    result = {**parse_pytest(Path(part["out"])), "rc": part["rc"]}
    if part["rc"] not in (0, 1, *TIMEOUT_CODES) and not result["complete"]:
      result["stderr_tail"] = tail(Path(part["err"]))
  elif args.parse == "routing" and parts:
    part = next(iter(parts.values()))
    result = {"memory": last_json(Path(part["out"])), "rc": part["rc"]}
    result.update(parse_routing(Path(args.routing_json)) if args.routing_json else {})
    if part["rc"] != 0:
      result["stderr_tail"] = tail(Path(part["err"]))
  elif args.parse == "paper":
    workdir = Path(args.workdir) if args.workdir else None
    result = parse_paper(parts, workdir, args.minutes, args.epoch_images)
    if "test_accuracy" not in result or result.get("test_accuracy") is None:
      if status == "ok":
        status = "failed"
      result["stderr_tail"] = {n: tail(Path(p["err"])) for n, p in parts.items()}
  else:
    for name, p in parts.items():
      got = last_json(Path(p["out"]))
      entry = got if got is not None else {"error": "no JSON line on stdout"}
      if p["rc"] != 0:
        entry = {**entry, "rc": p["rc"], "stderr_tail": tail(Path(p["err"]))}
      result[name] = entry
    if len(parts) == 1 and args.flatten:
      result = next(iter(result.values()))
  _set_keys(result, args.meta)
  if args.reason:
    result["reason"] = args.reason
  data = load(args.json)
  data.setdefault("stages", {})[args.stage] = {"status": status, "seconds": round(args.seconds, 1),
                                               "result": result}
  if args.stage == "env" and isinstance(result, dict):
    data["device"] = result.get("device") or data.get("device")
  _set_keys(data, args.top)
  save(args.json, data)
  print(f"[{args.stage}] {status} ({args.seconds:.0f} s)", flush=True)
  if status != "ok":
    for name, p in parts.items():
      for line in tail(Path(p["err"]), 4):
        print(f"  {name}: {line}")


def _set_keys(target: dict, items: list[str]) -> None:
  """KEY=VALUE items into `target`; VALUE is parsed as JSON where it is JSON, else kept as text."""
  for item in items:
    key, _, value = item.partition("=")
    try:
      target[key] = json.loads(value)
    except ValueError:
      target[key] = value


def _versions() -> dict:
  import importlib.metadata as md

  out = {"python": sys.version.split()[0]}
  for key, dist in (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"),
                    ("orbax", "orbax-checkpoint"), ("torch", "torch"), ("numpy", "numpy"),
                    ("protobuf", "protobuf"), ("tensorflow_datasets", "tensorflow-datasets"),
                    ("etils", "etils"), ("jax_cuda_plugin", "jax-cuda13-plugin")):
    try:
      out[key] = md.version(dist)
    except md.PackageNotFoundError:
      out[key] = None
  return out


def _requirements(manifest: Path) -> dict:
  """The requirements gpu_wheels.py left to the image, checked against what is installed."""
  import importlib.metadata as md

  try:
    wanted = json.loads(manifest.read_text())["from_image"]
  except (OSError, ValueError, KeyError):
    return {"checked": 0, "note": f"no manifest at {manifest}"}
  try:
    from packaging.requirements import Requirement
  except ImportError:
    Requirement = None
  unmet, have = [], {}
  for name, specs in wanted.items():
    try:
      version = md.version(name)
    except md.PackageNotFoundError:
      unmet.append(f"{name}: not installed")
      continue
    have[name] = version
    if Requirement is None:
      continue
    for spec in specs:
      if not Requirement(spec).specifier.contains(version, prereleases=True):
        unmet.append(f"{spec}: installed {version}")
  return {"checked": len(wanted), "unmet": unmet, "versions": have}


def env(args) -> int:
  """One JSON line: versions, devices, and whether tensorflow_datasets + the MNIST data work."""
  result: dict = {"versions": _versions(), "smoke": os.environ.get("GPU_SUITE_SMOKE") == "1"}
  ok = True
  try:
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    result["nvidia_smi"] = smi.stdout.strip().splitlines()
  except (OSError, subprocess.TimeoutExpired) as e:
    result["nvidia_smi"] = f"not available: {e}"
  try:
    import jax

    result["backend"] = jax.default_backend()
    result["devices"] = [str(d) for d in jax.devices()]
    result["device_kind"] = jax.devices()[0].device_kind
    if args.need_gpu and result["backend"] != "gpu":
      ok = False
      result["error"] = f"JAX's backend is {result['backend']!r}, not gpu"
  except Exception as e:  # report whatever broke, as one line
    ok = False
    result["error"] = f"jax: {type(e).__name__}: {e}"
  smi = result.get("nvidia_smi")
  result["device"] = (smi[0] if isinstance(smi, list) and smi else result.get("device_kind"))
  result["tensorflow_datasets_path"] = None
  try:
    import tensorflow_datasets as tfds

    result["tensorflow_datasets_path"] = str(Path(tfds.__file__).parent)
    from capsjax import data

    split = data.load_split("mnist", "test", limit=10)
    result["data_check"] = {"ok": True, "examples": len(split), "labels": split.labels.tolist(),
                            "data_dir": os.environ.get("TFDS_DATA_DIR")}
  except Exception as e:
    ok = False
    result["data_check"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:1000]}
  if args.manifest:
    result["image_requirements"] = _requirements(Path(args.manifest))
  for mod in ("tensorboardX", "torch", "xdist", "pytest_timeout"):
    try:
      __import__(mod)
      result.setdefault("importable", {})[mod] = True
    except Exception:
      result.setdefault("importable", {})[mod] = False
  print(json.dumps(result, default=repr))
  return 0 if ok else 1


def _highlights(name: str, status: str, result) -> str:
  """A few key figures of a stage, for the summary table."""
  if not isinstance(result, dict):
    return ""
  if status == "skipped" or (status != "ok" and "reason" in result):
    return str(result.get("reason", ""))[:70]
  def num(x, spec=".1f"):
    return format(x, spec) if isinstance(x, (int, float)) else "?"
  if name == "env":
    v = result.get("versions", {})
    if status != "ok":
      why = result.get("error") or result.get("data_check", {}).get("error") or result.get("reason")
      return str(why)[:90]
    return (f"{result.get('device')}; jax {v.get('jax')}, torch {v.get('torch')}; data "
            f"{'ok' if result.get('data_check', {}).get('ok') else 'FAILED'}")
  if name == "epoch_time":
    return "; ".join(f"{k}: {num(r.get('seconds_per_epoch'), '.2f')} s/epoch, "
                     f"{num(r.get('images_per_sec'), '.0f')} img/s"
                     for k, r in result.items() if isinstance(r, dict))
  if name == "throughput":
    return "; ".join(f"{k}: {num(r.get('train_images_per_sec'), '.0f')} img/s"
                     for k, r in result.items() if isinstance(r, dict))
  if name == "paper_minutes":
    acc = result.get("test_accuracy")
    return (f"{result.get('steps')} steps in {result.get('minutes')} min, test acc "
            f"{num(100 * acc, '.2f') + '%' if isinstance(acc, (int, float)) else '?'}, "
            f"{num(result.get('seconds_per_epoch'), '.2f')} s/epoch, "
            f"{num(result.get('images_per_sec_median'), '.0f')} img/s")
  if name == "compare_pytorch":
    rows = result.get("results") or []
    return "; ".join(f"B={r.get('batch_size')}: capsjax "
                     f"{num(r.get('capsjax_over_torch'), '.2f')}x as fast as torch"
                     for r in rows) or str(result.get("error", ""))[:70]
  if name == "routing_cost":
    rows = [r for r in result.get("rows", []) if r[0] == "dynamic" and r[1] != "forward"]
    return f"{result.get('points', '?')} points" + "".join(
        f"; dynamic fwd+bwd it={r[2]} B={r[3]}: {r[5]:.2f} ms" for r in rows[:3])
  if name == "tests":
    failing = result.get("failing", [])
    return (f"{result.get('passed')} passed, {result.get('failed')} failed, "
            f"{result.get('skipped')} skipped" + ("" if result.get("complete") else " (stopped)")
            + (f"; e.g. {failing[0]}" if failing else ""))
  return ""


def summary(args) -> None:
  data = load(args.json)
  print(f"{'stage':16} {'status':8} {'seconds':>8}  key figures")
  for name, stage in data.get("stages", {}).items():
    print(f"{name:16} {stage['status']:8} {stage['seconds']:8.1f}  "
          f"{_highlights(name, stage['status'], stage.get('result'))}")
  line = json.dumps(data, separators=(",", ":"), default=repr)
  if len(line) > MAX_LINE:  # the device tool returns only the output's last 12,000 characters
    for stage in data.get("stages", {}).values():
      result = stage.get("result")
      if isinstance(result, dict):
        for key in ("rows", "image_requirements", "periodic_test_accuracy", "importable"):
          result.pop(key, None)
    data["shortened"] = f"long fields left out; the whole record is {args.json.name}"
    line = json.dumps(data, separators=(",", ":"), default=repr)
  print(line)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  e = sub.add_parser("env")
  e.add_argument("--manifest", default=None)
  e.add_argument("--need-gpu", action="store_true")
  r = sub.add_parser("record")
  r.add_argument("json", type=Path)
  r.add_argument("stage")
  r.add_argument("--seconds", type=float, required=True)
  r.add_argument("--part", nargs=4, action="append", default=[],
                 metavar=("NAME", "RC", "OUT", "ERR"))
  r.add_argument("--ok-rc", action="append", default=[], metavar="PART=CODE[,CODE]",
                 help="exit codes that count as success for PART besides 0")
  r.add_argument("--status", choices=("ok", "failed", "timeout", "skipped"), default=None)
  r.add_argument("--reason", default=None)
  r.add_argument("--parse", choices=("last", "tests", "paper", "routing"), default="last")
  r.add_argument("--routing-json", default=None, help="routing: its routing_cost.json")
  r.add_argument("--flatten", action="store_true", help="one part: its JSON is the result")
  r.add_argument("--workdir", default=None, help="paper: the run's workdir")
  r.add_argument("--minutes", type=float, default=None, help="paper: the time it was given")
  r.add_argument("--epoch-images", type=int, default=None,
                 help="paper: training images per epoch (for seconds per epoch)")
  r.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                 help="add KEY to the stage's result (VALUE: JSON or text)")
  r.add_argument("--top", action="append", default=[], metavar="KEY=VALUE",
                 help="set KEY at the top level of the JSON file")
  s = sub.add_parser("summary")
  s.add_argument("json", type=Path)
  args = p.parse_args(argv)
  if args.command == "env":
    return env(args)
  if args.command == "record":
    record(args)
  else:
    summary(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
