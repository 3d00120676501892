"""What routing costs: every registered rule over iterations, N_in, batch and N_out.

    python benchmarks/routing_cost.py                      # default grid, all rules
    python benchmarks/routing_cost.py --rules dynamic,em --iters 1,3,5 --n-in 1152 --batch 128

For every (rule, iterations, batch, N_in, N_out) it jit-compiles the rule `jax.vmap`ped over the
batch, on votes u_hat [B, N_in, N_out, D] (and the rule's learnable parameters), forward alone and
forward + backward (gradient of the outputs' sum w.r.t. the votes and parameters), and reports:
median wall time over `--repeats` runs after one warm-up (each ends in `block_until_ready`),
FLOPs and bytes accessed from XLA's `cost_analysis()`, peak memory from `memory_analysis()`
(arguments + outputs + temporaries), and the achieved GFLOP/s and GB/s. (`cost_analysis()`
counts the body of a loop once, so FLOPs and bytes are left empty for the chunked variant, a
`lax.scan`; the rules unroll their iterations, so theirs are complete.)

Two extra rows per point, `dynamic+votes` and `dynamic_chunked+votes`, start from the capsules
u [B, N_in, D_in] and W instead, i.e. include computing the votes: the plain version materialises
[B, N_in, N_out, D] votes, the chunked one (`capsjax.routing.dynamic_routing_chunked`) never does.

The default grid sweeps iterations 1..5 at N_in = 1152 and N_in in {288, 1152, 4608} at 3
iterations (batch 32, N_out 10, D 16; one-pass rules only at 1 iteration); `--full-grid` takes
the Cartesian product instead. Writes routing_cost.csv, routing_cost.json, and PNG plots (time vs
iterations, time vs N_in) to `--out`; prints a table; the last stdout line is the memory
comparison of plain vs chunked dynamic routing at `--memory-batch` x 1152 as JSON. Runs
unchanged on CPU and GPU.
"""

import argparse
import csv
import dataclasses
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from capsjax import routing
from capsjax.core.squash import squash
from capsjax.infra.runtime import tune_host_allocator

VOTE_VARIANTS = ("dynamic+votes", "dynamic_chunked+votes")


@dataclasses.dataclass(frozen=True)
class Point:
  rule: str
  iters: int
  batch: int
  n_in: int
  n_out: int
  dim: int
  in_dim: int
  chunk_size: int


def _inputs(p: Point):
  """(args tuple, per-example function of those args) for one benchmark point."""
  key = jax.random.key(0)
  if p.rule in VOTE_VARIANTS:
    u = squash(jax.random.normal(key, (p.batch, p.n_in, p.in_dim)))  # like PrimaryCaps output
    W = 0.05 * jax.random.normal(jax.random.key(1), (p.n_in, p.n_out, p.dim, p.in_dim))
    if p.rule == "dynamic+votes":
      fn = lambda u, W: routing.dynamic_routing(jnp.einsum("ijdk,ik->ijd", W, u), p.iters)
    else:
      fn = lambda u, W: routing.dynamic_routing_chunked(u, W, p.iters, chunk_size=p.chunk_size)
    return (u, W), (0, None), fn
  info = routing.info(p.rule)
  u_hat = 0.05 * jax.random.normal(key, (p.batch, p.n_in, p.n_out, p.dim))
  params = routing.init_params(p.rule, jax.random.key(1), p.n_in, p.n_out, p.dim)
  if info.uses_activations:
    acts = jax.random.uniform(jax.random.key(2), (p.batch, p.n_in))
    fn = lambda u_hat, params, a: info.fn(u_hat, num_iters=p.iters, activations=a, **params)
    return (u_hat, params, acts), (0, None, 0), fn
  fn = lambda u_hat, params: info.fn(u_hat, num_iters=p.iters, **params)
  return (u_hat, params), (0, None), fn


def _programs(p: Point):
  args, in_axes, fn = _inputs(p)
  batched = jax.vmap(fn, in_axes=in_axes)

  def forward(*args):
    return batched(*args)

  def loss(*args):
    res = batched(*args)
    return jnp.sum(res.v) + (0.0 if res.a is None else jnp.sum(res.a))

  diff_args = tuple(range(min(2, len(args))))
  backward = jax.grad(loss, argnums=diff_args)
  return args, {"forward": forward, "forward+backward": backward}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
  return {"flops": float(cost.get("flops", float("nan"))),
          "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
          "peak_bytes": peak, "temp_bytes": None if mem is None else mem.temp_size_in_bytes}


def measure(p: Point, repeats: int, timed: bool = True) -> list[dict]:
  """Rows (one per pass: forward, forward+backward) for point `p`."""
  args, programs = _programs(p)
  rows = []
  for pass_name, fn in programs.items():
    compiled = jax.jit(fn).lower(*args).compile()
    row = {**dataclasses.asdict(p), "pass": pass_name, **_cost(compiled)}
    if p.rule == "dynamic_chunked+votes":  # cost_analysis counts a loop body once, not per chunk
      row["flops"] = row["bytes_accessed"] = None
    if timed:
      jax.block_until_ready(compiled(*args))  # warm-up
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
      row["median_ms"] = 1e3 * statistics.median(times)
      for rate, amount in (("gflops_per_s", "flops"), ("gb_per_s", "bytes_accessed")):
        row[rate] = None if row[amount] is None else row[amount] / (row["median_ms"] * 1e6)
    rows.append(row)
  return rows


def grid(args) -> list[Point]:
  rules = [r for r in args.rules.split(",") if r]
  for r in rules:
    if r not in VOTE_VARIANTS:
      routing.info(r)  # ValueError naming the available rules
  iters = _ints(args.iters, "--iters")
  n_ins, batches, n_outs = (_ints(args.n_in, "--n-in"), _ints(args.batch, "--batch"),
                            _ints(args.n_out, "--n-out"))
  if args.full_grid:
    combos = list(itertools.product(iters, batches, n_ins, n_outs))
  else:  # iterations at the middle N_in, N_in at the middle iteration count
    mid_in, mid_it = n_ins[len(n_ins) // 2], 3 if 3 in iters else iters[len(iters) // 2]
    combos = ([(it, b, mid_in, o) for it in iters for b in batches for o in n_outs] +
              [(mid_it, b, n, o) for n in n_ins if n != mid_in for b in batches for o in n_outs])
  points = []
  for rule in rules:
    iterative = rule in VOTE_VARIANTS or routing.info(rule).iterative
    for it, b, n, o in combos:
      if not iterative and it != min(iters):
        it = None  # one-pass rule: num_iters is ignored, measure it once per shape
      point = Point(rule, it or 1, b, n, o, args.dim, args.in_dim, args.chunk_size)
      if point not in points:
        points.append(point)
  return points


def _ints(text: str, flag: str) -> list[int]:
  try:
    values = [int(x) for x in text.split(",") if x]
  except ValueError:
    raise ValueError(f"{flag} expects comma-separated integers, got {text!r}.") from None
  if not values or min(values) < 1:
    raise ValueError(f"{flag} expects positive integers, got {text!r}.")
  return values


def memory_comparison(batch: int, n_in: int, chunk_size: int, iters: int = 3) -> dict:
  """Peak bytes (memory_analysis) of dynamic routing with plain vs chunked votes."""
  out = {"batch": batch, "n_in": n_in, "chunk_size": chunk_size, "iters": iters}
  for rule in VOTE_VARIANTS:
    p = Point(rule, iters, batch, n_in, 10, 16, 8, chunk_size)
    for row in measure(p, 0, timed=False):
      out[f"{rule}/{row['pass']}/peak_MB"] = row["peak_bytes"] / 1e6
  for pass_name in ("forward", "forward+backward"):
    out[f"reduction/{pass_name}"] = (out[f"dynamic+votes/{pass_name}/peak_MB"] /
                                     out[f"dynamic_chunked+votes/{pass_name}/peak_MB"])
  return out


def plot(rows: list[dict], out: Path) -> list[Path]:
  """time vs iterations and time vs N_in, forward and forward+backward; returns the PNG paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  n_ins = sorted({r["n_in"] for r in rows})
  mid_in = n_ins[len(n_ins) // 2]
  batch, n_out = rows[0]["batch"], rows[0]["n_out"]
  one_pass = {r["rule"] for r in rows if r["rule"] not in VOTE_VARIANTS
              and not routing.info(r["rule"]).iterative}
  sweep_iters = [r["iters"] for r in rows if r["n_in"] != mid_in and r["rule"] not in one_pass]
  sweep_it = max(set(sweep_iters), key=sweep_iters.count) if sweep_iters else 3
  for x_key, title in (("iters", "time vs routing iterations"),
                       ("n_in", "time vs input capsules N_in")):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, pass_name in zip(axes, ("forward", "forward+backward")):
      for rule in sorted({r["rule"] for r in rows}):
        sel = [r for r in rows if r["rule"] == rule and r["pass"] == pass_name
               and r["batch"] == batch and r["n_out"] == n_out]
        if x_key == "iters":
          line = sorted((r["iters"], r["median_ms"]) for r in sel if r["n_in"] == mid_in)
        else:
          line = sorted((r["n_in"], r["median_ms"]) for r in sel
                        if r["iters"] == sweep_it or rule in one_pass)
        if x_key == "iters" and rule in one_pass:  # num_iters is ignored: a flat line
          if line:
            its = sorted({r["iters"] for r in rows})
            ax.plot(its, [line[0][1]] * len(its), "--", label=f"{rule} (one pass)")
        elif line:
          ax.plot(*zip(*line), "o-", label=rule)
      ax.set_title(f"{pass_name}, batch {batch}, N_out {n_out}"
                   + (f", N_in {mid_in}" if x_key == "iters" else f", {sweep_it} iterations"))
      ax.set_xlabel("routing iterations" if x_key == "iters" else "N_in")
      ax.set_ylabel("median ms")
      if x_key == "n_in":
        ax.set_xscale("log")
        ax.set_yscale("log")
      ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} ({jax.default_backend()}, JAX {jax.__version__})")
    fig.tight_layout()
    path = out / f"routing_cost_vs_{x_key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths


COLUMNS = ("rule", "pass", "iters", "batch", "n_in", "n_out", "dim", "in_dim", "chunk_size",
           "median_ms", "flops", "bytes_accessed", "peak_bytes", "temp_bytes", "gflops_per_s",
           "gb_per_s")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rules", default=",".join(routing.available() + list(VOTE_VARIANTS)),
                 help="comma-separated registered rules (and/or dynamic+votes, "
                      "dynamic_chunked+votes); default: all")
  p.add_argument("--iters", default="1,2,3,4,5")
  p.add_argument("--batch", default="32")
  p.add_argument("--n-in", default="288,1152,4608")
  p.add_argument("--n-out", default="10")
  p.add_argument("--dim", type=int, default=16, help="output capsule dimension D")
  p.add_argument("--in-dim", type=int, default=8, help="input capsule dimension (votes rows)")
  p.add_argument("--chunk-size", type=int, default=64, help="for dynamic_chunked+votes")
  p.add_argument("--full-grid", action="store_true", help="Cartesian product of all values")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--memory-batch", type=int, default=128)
  p.add_argument("--out", type=Path, default=Path("benchmarks/results/routing_cost"))
  p.add_argument("--no-plots", action="store_true")
  args = p.parse_args(argv)
  tune_host_allocator()
  points = grid(args)
  args.out.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  rows = []
  for point in tqdm(points, unit="point", desc="routing cost"):
    rows.extend(measure(point, args.repeats))
  with open(args.out / "routing_cost.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  memory = memory_comparison(args.memory_batch, 1152, args.chunk_size)
  meta = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
          "jax": jax.__version__, "seconds": time.time() - t0}
  (args.out / "routing_cost.json").write_text(json.dumps(
      {"meta": meta, "rows": rows, "memory": memory}, indent=1))
  print(f"{'rule':24} {'pass':17} {'it':>2} {'B':>4} {'N_in':>5} {'ms':>9} {'GFLOP':>8} "
        f"{'GFLOP/s':>8} {'GB/s':>7} {'peak MB':>8}")
  def fmt(x, scale, spec):
    return "n/a".rjust(int(spec.split(".")[0])) if x is None else format(x / scale, spec)

  for r in rows:
    print(f"{r['rule']:24} {r['pass']:17} {r['iters']:2d} {r['batch']:4d} {r['n_in']:5d} "
          f"{r['median_ms']:9.2f} {fmt(r['flops'], 1e9, '8.3f')} "
          f"{fmt(r['gflops_per_s'], 1, '8.1f')} {fmt(r['gb_per_s'], 1, '7.1f')} "
          f"{fmt(r['peak_bytes'], 1e6, '8.1f')}")
  if not args.no_plots:
    for path in plot(rows, args.out):
      print(f"wrote {path}")
  print(f"{len(points)} points in {time.time() - t0:.0f} s; results in {args.out}")
  print(json.dumps(memory))
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except ValueError as e:
    sys.exit(f"routing_cost: error: {e}")
