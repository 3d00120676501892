"""Where one training step's time goes: XLA's own per-op profile of the loop's program, by part.

    python benchmarks/step_profile.py --batch-sizes 32,128 --steps 6

For each batch size: the paper's CapsNet + Adam as `capsjax train` runs it (the loop's K-step
program, `train_throughput.build`, one step per dispatch), compiled and warmed up, then `--steps`
dispatches under `jax.profiler`. XLA:CPU records one trace event per executed thunk (a fusion, a
matmul, a scatter), named like the HLO instruction it runs; each is attributed to a part of the
step by the named scope in that instruction's `op_name` (`conv1`, `primary_caps`, `patch_gather`,
`votes`, `routing`, `decoder`, `losses`, `optimizer`, `finite_check`, `batch`; the backward pass
by JAX's `transpose(...)` around it); an op's time per step is the median of its runs. Matmul FLOPs per part come from the compiled HLO's dot
shapes (2 x output elements x contracted size), so each part's GFLOP/s is its matmuls' FLOPs
over its whole time. Thunks of one step may run side by side on the CPU's threads, so the parts'
sum can exceed the step's wall time; both are reported.

The last stdout line is one JSON object: cpu, gemm_gflops (this machine's 4096x4096 fp32 matmul
in JAX, measured first), and per batch size the step's wall ms, the parts (ms, GFLOP, GFLOP/s)
and the 12 slowest ops with their shapes.
"""

import argparse
import collections
import glob
import gzip
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # noqa: E402  (same folder)
from capsjax.infra.runtime import tune_host_allocator  # noqa: E402

# Named scope -> part, most specific first (`patch_gather` sits inside conv1/primary_caps).
SCOPES = ("patch_gather", "conv1", "primary_caps", "votes_and_routing", "votes", "routing",
          "decoder", "losses", "optimizer", "finite_check", "batch")
LAYERS = ("conv1", "primary_caps")
# Opcodes whose events enclose other thunks' events (counted through those instead).
CONTAINERS = {"while", "conditional", "call"}

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* (\w[\w\-]*)\((.*)")
_OPERANDS = re.compile(r"%([\w.\-]+)")


def part_of(op_name: str) -> str:
  """The step's part an op belongs to, from its op_name (JAX's name stack)."""
  backward = "transpose(" in op_name
  scopes = re.findall(r"(?:^|[/(])(" + "|".join(SCOPES) + r")(?=[/)]|$)", op_name)
  if not scopes:
    return "other (state select, loop, bookkeeping)"
  found = set(scopes)
  if "patch_gather" in found:
    layer = next((s for s in LAYERS if s in found), "conv")
    return f"{layer} patch {'scatter-add (gather backward)' if backward else 'gather'}"
  name = next(s for s in SCOPES if s in found)
  if name in ("optimizer", "finite_check", "batch"):
    return name
  return f"{name} {'backward' if backward else 'forward'}"


def parse_hlo(text: str) -> dict:
  """{instruction: (opcode, op_name, shape, operands, called computation, dims text)} of an
  optimized HLO module's text, and the computations' member instructions."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    if line and not line.startswith(" ") and "{" in line and "(" in line:
      current = line.split(" ", 1)[0].lstrip("%")
      if current == "ENTRY":
        current = line.split(" ")[1].lstrip("%")
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, _, dims, opcode, rest = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    called = re.search(r"calls=%([\w.\-]+)", rest)
    args = rest.split(")", 1)[0]
    instructions[name] = {
        "opcode": opcode, "op_name": op_name.group(1) if op_name else "",
        "shape": [int(d) for d in dims.split(",") if d], "operands": _OPERANDS.findall(args),
        "calls": called.group(1) if called else None, "text": rest}
    computations[current].append(name)
  return {"instructions": instructions, "computations": computations}


def dot_flops(hlo: dict, name: str) -> float:
  """Matmul FLOPs of an instruction: a dot, or a fusion whose computation holds dots."""
  ins = hlo["instructions"][name]
  if ins["opcode"] == "dot":
    lhs = hlo["instructions"].get(ins["operands"][0]) if ins["operands"] else None
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins["text"])
    if lhs is None or contracting is None:
      return 0.0
    size = math.prod(lhs["shape"][int(d)] for d in contracting.group(1).split(",") if d)
    return 2.0 * math.prod(ins["shape"]) * size
  if ins["calls"]:
    return sum(dot_flops(hlo, inner) for inner in hlo["computations"][ins["calls"]]
               if hlo["instructions"][inner]["opcode"] in ("dot", "fusion"))
  return 0.0


def gemm_gflops(n: int = 4096, reps: int = 5) -> float:
  """Best-of-`reps` GFLOP/s of an n x n fp32 matmul in JAX."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


def profile(batch_size: int, steps: int, routing_iters: int = 3) -> dict:
  """The per-part profile of `steps` training steps at `batch_size` (one step per dispatch)."""
  bench = train_throughput.build(batch_size, routing_iters)
  compiled = bench.train_chunk.lower(bench.state, *bench.source.chunk(0, 1), bench.keys).compile()
  hlo = parse_hlo(compiled.as_text())
  state = bench.state
  for s in range(2):  # compile + warm-up
    state = train_throughput.run_chunk(bench, state, bench.source.chunk(s, 1))
  chunks = [bench.source.chunk(2 + s, 1) for s in range(steps)]
  walls = []
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for chunk in chunks:
      t0 = time.perf_counter()
      state = train_throughput.run_chunk(bench, state, chunk)
      walls.append(time.perf_counter() - t0)
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  runs = collections.defaultdict(list)
  for e in events:
    ins = hlo["instructions"].get(e["name"])
    if ins is not None and ins["opcode"] not in CONTAINERS:
      runs[e["name"]].append(e["dur"] / 1e3)  # us -> ms
  # Per op: its median run x its runs per step, so that a step slowed by the host (a page fault
  # storm when the allocator maps fresh memory) does not skew the parts.
  per_op = collections.Counter({name: statistics.median(d) * len(d) / steps
                                for name, d in runs.items()})
  parts = collections.defaultdict(lambda: {"ms": 0.0, "gflop": 0.0})
  for name, ms in per_op.items():
    part = parts[part_of(hlo["instructions"][name]["op_name"])]
    part["ms"] += ms
    part["gflop"] += dot_flops(hlo, name) / 1e9
  table = [{"part": p, "ms": v["ms"], "gflop": v["gflop"],
            "gflop_per_s": v["gflop"] / (v["ms"] / 1e3) if v["ms"] and v["gflop"] else None}
           for p, v in sorted(parts.items(), key=lambda kv: -kv[1]["ms"])]
  top = [{"op": name, "ms": ms, "part": part_of(hlo["instructions"][name]["op_name"]),
          "shape": hlo["instructions"][name]["shape"],
          "gflop": dot_flops(hlo, name) / 1e9} for name, ms in per_op.most_common(12)]
  return {"batch_size": batch_size, "steps": steps, "step_ms": 1e3 * statistics.median(walls),
          "ops_ms": sum(per_op.values()), "parts": table, "top_ops": top}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-sizes", default="32,128")
  p.add_argument("--steps", type=int, default=6, help="profiled steps per batch size")
  p.add_argument("--routing-iters", type=int, default=3)
  args = p.parse_args(argv)
  try:
    batches = [int(b) for b in args.batch_sizes.split(",")]
  except ValueError:
    p.error(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}")
  if min(batches + [args.steps, args.routing_iters]) < 1:
    p.error("--batch-sizes, --steps and --routing-iters must be positive integers")
  peak = gemm_gflops()
  results = []
  for b in batches:
    r = profile(b, args.steps, args.routing_iters)
    results.append(r)
    print(f"\nbatch {b}: step {r['step_ms']:.1f} ms wall, ops {r['ops_ms']:.1f} ms "
          f"(4096^2 matmul {peak:.0f} GFLOP/s)")
    for row in r["parts"]:
      rate = f"{row['gflop_per_s']:7.1f}" if row["gflop_per_s"] else "       "
      print(f"  {row['part']:<46} {row['ms']:8.2f} ms {rate} GFLOP/s "
            f"{100 * row['ms'] / r['ops_ms']:5.1f}%")
  print(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "gemm_gflops": peak,
                    "jax_version": jax.__version__, "backend": jax.default_backend(),
                    "date": time.strftime("%Y-%m-%d"), "profiles": results}))


if __name__ == "__main__":
  main()
