"""Wheels for the GPU machine: what capsjax needs that its image lacks (run by gpu_prepare.sh).

    .venv/bin/python benchmarks/gpu_wheels.py download --dest .gpu/wheels
    .venv/bin/python benchmarks/gpu_wheels.py check --dest .gpu/wheels

`download` walks the dependency closure of capsjax's requirements (pyproject.toml: the
dependencies and the test extra, less tensorboardX) from each wheel's METADATA Requires-Dist,
evaluated for CPython 3.12 on x86-64 Linux. A package in the GPU image (IMAGE_PACKAGES) is taken
from there and not followed, except for the extras asked of it (etils[epath] -> fsspec, ...),
read from this interpreter's installed metadata. Every other one is fetched as a wheel for that
target, at the version installed in this interpreter's environment where there is one (so the
GPU runs the same code), else the newest that fits. A package with no wheel on the index is
built from its sdist here, and kept only if the result is pure Python (py3-none-any). Wheels in
DEST that the closure no longer names are removed; wheels already there are not fetched again.
Writes DEST/../manifest.json: the wheels, and the requirements left to the image (the suite
checks those on the GPU machine). `check` verifies every wheel's requirements against the wheels
present and the image list, and exits 1 naming each unmet one.

Standard library, plus `packaging` (installed with pip; pip's vendored copy otherwise).
"""

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

try:
  from packaging.requirements import Requirement
  from packaging.version import Version
except ImportError:  # pip's vendored copy
  from pip._vendor.packaging.requirements import Requirement
  from pip._vendor.packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.12"  # the GPU image's python3 (3.12.3)
PLATFORMS = ([f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)]
             + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])
# Markers as they evaluate on the GPU machine.
TARGET_ENV = {"python_version": PYTHON_VERSION, "python_full_version": "3.12.3",
              "implementation_name": "cpython", "implementation_version": "3.12.3",
              "platform_python_implementation": "CPython", "platform_system": "Linux",
              "platform_machine": "x86_64", "sys_platform": "linux", "os_name": "posix",
              "platform_release": "", "platform_version": "", "extra": ""}
# Not carried: optional for capsjax (`--tensorboard`); the tests that need it are deselected.
EXCLUDED = {"tensorboardx"}

# The GPU machines' image ("cuda") holds these Python packages (its package list, 2026-11-17).
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split()


def normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


IMAGE = {normalize(n) for n in IMAGE_PACKAGES}


def wheel_name_version(path: Path) -> tuple[str, str]:
  """(normalized name, version) from a wheel's file name."""
  parts = path.name[:-len(".whl")].split("-")
  if len(parts) not in (5, 6):
    raise ValueError(f"{path.name!r} is not a wheel file name (NAME-VERSION-PY-ABI-PLATFORM.whl).")
  return normalize(parts[0]), parts[1]


def wheel_requires(path: Path) -> list[str]:
  """The Requires-Dist lines of a wheel's METADATA."""
  with zipfile.ZipFile(path) as z:
    meta = [n for n in z.namelist()
            if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info")
            and n.endswith("/METADATA")]
    if len(meta) != 1:
      raise ValueError(f"{path.name}: expected one *.dist-info/METADATA, found {len(meta)}.")
    text = z.read(meta[0]).decode("utf-8")
  head = text.split("\n\n", 1)[0]  # the headers; the long description follows
  return [line.split(":", 1)[1].strip() for line in head.splitlines()
          if line.startswith("Requires-Dist:")]


def applies(req: Requirement, extras: set[str]) -> bool:
  """Whether `req` applies on the GPU machine when the dependent was asked with `extras`."""
  if req.marker is None:
    return True
  return any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in ({""} | extras))


def installed_versions() -> dict[str, str]:
  """{normalized name: version} of this interpreter's environment (as `pip freeze` lists it)."""
  return {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
          if d.metadata["Name"]}


def installed_requires(name: str) -> list[str] | None:
  try:
    return importlib.metadata.distribution(name).requires or []
  except importlib.metadata.PackageNotFoundError:
    return None


def project_roots(pyproject: Path) -> list[Requirement]:
  """capsjax's dependencies and test extra, from pyproject.toml."""
  project = tomllib.loads(pyproject.read_text())["project"]
  lines = [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]
  return [Requirement(line) for line in lines]


def find_wheels(dest: Path, name: str) -> list[Path]:
  return sorted(p for p in dest.glob("*.whl") if wheel_name_version(p)[0] == name)


def pip(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch(dest: Path, name: str, spec: str) -> Path:
  """Downloads the wheel of `name` + `spec` (e.g. "==1.2") for the GPU machine into `dest`."""
  target = f"{name}{spec}"
  before = set(dest.glob("*.whl"))
  plat = [a for p in PLATFORMS for a in ("--platform", p)]
  r = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
          "--implementation", "cp", *plat, "-d", str(dest), target)
  if r.returncode != 0:  # no wheel on the index: build it here, keep it only if pure Python
    with tempfile.TemporaryDirectory() as tmp:
      b = pip("wheel", "--no-deps", "-w", tmp, target)
      built = list(Path(tmp).glob("*.whl"))
      if b.returncode != 0 or len(built) != 1:
        raise SystemExit(f"gpu_wheels: error: no wheel of {target} for CPython {PYTHON_VERSION} "
                         f"x86-64 Linux, and building one failed:\n{r.stderr[-1500:]}\n"
                         f"{b.stderr[-1500:]}")
      if not built[0].name.endswith("-none-any.whl"):
        raise SystemExit(f"gpu_wheels: error: {target} has no wheel for CPython "
                         f"{PYTHON_VERSION} on the index and the one built here "
                         f"({built[0].name}) is not pure Python, so it would not run there.")
      (dest / built[0].name).write_bytes(built[0].read_bytes())
  key = normalize(name)
  new = [p for p in set(dest.glob("*.whl")) - before if wheel_name_version(p)[0] == key]
  found = new or find_wheels(dest, key)
  if len(found) != 1:
    raise SystemExit(f"gpu_wheels: error: expected one wheel of {name} in {dest} after "
                     f"fetching {target}, found {[p.name for p in found]}.")
  return found[0]


def resolve(dest: Path, roots: list[Requirement], also: set[str]) -> dict:
  """Fetches the closure into `dest`; returns {"wheels": {...}, "from_image": {...}, ...}."""
  versions = installed_versions()
  carried: dict[str, Path] = {}  # name -> wheel
  from_image: dict[str, list[str]] = {}  # name -> requirement strings on it
  excluded: set[str] = set()
  expanded: set[tuple[str, str]] = set()  # (name, extra) whose requirements were queued
  queue: list[tuple[Requirement, str]] = [(r, "pyproject.toml") for r in roots]
  while queue:
    req, by = queue.pop(0)
    name = normalize(req.name)
    if name in EXCLUDED:
      excluded.add(name)
      continue
    if name in IMAGE and name not in also:
      from_image.setdefault(name, [])
      text = f"{req.name}{req.specifier}" if req.specifier else req.name
      if text not in from_image[name]:
        from_image[name].append(text)
      todo = set(req.extras) - {e for n, e in expanded if n == name}
      if todo:  # the image has the package; its extras may need more
        lines = installed_requires(req.name)
        if lines is None:
          raise SystemExit(f"gpu_wheels: error: {by} asks for {req}; to follow its extras, "
                           f"install {req.name} in this environment first.")
        queue.extend(_deps(lines, todo, req.name))
        expanded.update((name, e) for e in todo)
      continue
    if name not in carried:
      present = find_wheels(dest, name)
      pinned = versions.get(name)
      if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
        print(f"note: {by} asks for {req}; this environment has {name} {pinned}, so the GPU "
              "gets the newest that fits instead")
        pinned = None
      keep = [p for p in present if (Version(wheel_name_version(p)[1]) == Version(pinned)
                                     if pinned else
                                     req.specifier.contains(wheel_name_version(p)[1], True))]
      for p in set(present) - set(keep[:1]):
        print(f"removing {p.name} (another version than the one wanted)")
        p.unlink()
      if keep:
        carried[name] = keep[0]
        print(f"have  {keep[0].name}")
      else:
        carried[name] = fetch(dest, req.name, f"=={pinned}" if pinned else str(req.specifier))
        print(f"fetched {carried[name].name}")
      queue.extend(_deps(wheel_requires(carried[name]), set(req.extras), req.name))
      expanded.update((name, e) for e in req.extras)
    else:
      version = wheel_name_version(carried[name])[1]
      if not req.specifier.contains(version, prereleases=True):
        raise SystemExit(f"gpu_wheels: error: {by} asks for {req} but {carried[name].name} is "
                         "the version chosen; pin a version that fits both.")
      todo = set(req.extras) - {e for n, e in expanded if n == name}
      if todo:
        queue.extend(_deps(wheel_requires(carried[name]), todo, req.name, only_extras=True))
        expanded.update((name, e) for e in todo)
  for p in dest.glob("*.whl"):
    if p not in carried.values():
      print(f"removing {p.name} (no longer in the closure)")
      p.unlink()
  return {"python_version": PYTHON_VERSION,
          "wheels": {n: p.name for n, p in sorted(carried.items())},
          "from_image": dict(sorted(from_image.items())), "excluded": sorted(excluded)}


def _deps(lines: list[str], extras: set[str], by: str,
          only_extras: bool = False) -> list[tuple[Requirement, str]]:
  """The requirements among `lines` that apply on the GPU machine, with who asked for them."""
  out = []
  for line in lines:
    req = Requirement(line)
    if only_extras and not any(req.marker and req.marker.evaluate({**TARGET_ENV, "extra": e})
                               for e in extras):
      continue
    if applies(req, extras):
      out.append((req, by))
  return out


def check(dest: Path) -> list[str]:
  """Unmet requirements of the wheels in `dest` (against those wheels and the image list)."""
  wheels = {}
  for p in sorted(dest.glob("*.whl")):
    name, version = wheel_name_version(p)
    if name in wheels:
      raise SystemExit(f"gpu_wheels: error: two wheels of {name} in {dest}: {wheels[name][0]} "
                       f"and {p.name}; pip refuses to install both.")
    wheels[name] = (p.name, version, wheel_requires(p))
  unmet = []
  # The extras each carried package is asked for by the others (e.g. etils[epath]).
  asked: dict[str, set[str]] = {n: set() for n in wheels}
  for _, _, lines in wheels.values():
    for line in lines:
      req = Requirement(line)
      if applies(req, set()) and normalize(req.name) in asked:
        asked[normalize(req.name)] |= set(req.extras)
  for name, (file, _, lines) in sorted(wheels.items()):
    for line in lines:
      req = Requirement(line)
      if not applies(req, asked[name]):
        continue
      dep = normalize(req.name)
      if dep in wheels:
        if not req.specifier.contains(wheels[dep][1], prereleases=True):
          unmet.append(f"{file}: {line} (carried: {wheels[dep][0]})")
      elif dep in EXCLUDED:
        unmet.append(f"{file}: {line} (excluded on purpose)")
      elif dep not in IMAGE:
        unmet.append(f"{file}: {line} (neither carried nor in the GPU image)")
      elif req.extras:  # an image package's extras: what they need, as installed here
        for extra_line in installed_requires(req.name) or []:
          sub = Requirement(extra_line)
          if (sub.marker and applies(sub, set(req.extras)) and not applies(sub, set())
              and normalize(sub.name) not in set(wheels) | IMAGE):
            unmet.append(f"{file}: {line} -> {extra_line} (neither carried nor in the image)")
  return unmet


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("command", choices=("download", "check"))
  p.add_argument("--dest", type=Path, default=REPO / ".gpu" / "wheels")
  p.add_argument("--also", action="append", default=[], metavar="NAME[SPEC]",
                 help="carry this package too, even if the image has it (e.g. protobuf)")
  args = p.parse_args(argv)
  args.dest.mkdir(parents=True, exist_ok=True)
  if args.command == "download":
    also = [Requirement(a) for a in args.also]
    manifest = resolve(args.dest, project_roots(REPO / "pyproject.toml") + also,
                       {normalize(r.name) for r in also})
    (args.dest.parent / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(manifest['wheels'])} wheels in {args.dest}; left to the GPU image: "
          f"{', '.join(manifest['from_image'])}")
  unmet = check(args.dest)
  for line in unmet:
    print(f"unmet: {line}")
  n = len(list(args.dest.glob("*.whl")))
  print(f"closure check: {n} wheels, {len(unmet)} unmet requirement(s)")
  return 1 if unmet else 0


if __name__ == "__main__":
  sys.exit(main())
