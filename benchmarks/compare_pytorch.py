"""capsjax vs a straightforward PyTorch eager CapsNet, timed alternately in one process.

    pip install torch==2.13.0   # not a capsjax dependency (optional); the CPU wheel
    python benchmarks/compare_pytorch.py --batch-sizes 32,128 --rounds 5 --steps 3

Two comparisons, each on whichever backend is present (CUDA for PyTorch if available, JAX's
default backend):
- the whole network: the PyTorch model is the same as capsjax's default CapsNet (nn.Conv2d layers,
  einsum votes and dynamic routing with 3 iterations, masked decoder, margin + 0.0005 * SSE
  reconstruction loss, Adam); one train step each;
- dynamic routing alone: forward + backward of 3-iteration routing on votes
  [B, 1152, 10, 16] (capsjax: `jax.vmap(dynamic_routing)` jitted; PyTorch: the same einsums).
Each round times `--steps` steps of capsjax, then of PyTorch, so both see the same machine state;
the median step time over rounds is reported. Also measures the fp32 GEMM peak (a 4096x4096
matmul) to express each framework's throughput as a fraction of it. The last stdout line is one
JSON object.
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

try:
  import torch
  from torch import nn
except ImportError:
  raise SystemExit("compare_pytorch: error: PyTorch is not installed (it is not a capsjax "
                   "dependency); pip install torch to run this comparison.") from None

import train_throughput  # same folder
from capsjax.infra.runtime import tune_host_allocator
from capsjax.routing import dynamic_routing

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def capsnet_flops_per_image(batch_size: int = 8) -> float:
  """FLOPs of one training step per image for the default CapsNet, from XLA's cost analysis of
  the loop's program for one step per dispatch (its while loop's body counted once)."""
  bench = train_throughput.build(batch_size, 3)
  lowered = bench.train_chunk.lower(bench.state, *bench.source.chunk(0, 1), bench.keys)
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost["flops"]) / batch_size


def torch_squash(s, dim=-1, eps=1e-7):
  sq = (s * s).sum(dim=dim, keepdim=True)
  return sq / (1 + sq) * s / torch.sqrt(sq + eps)


def torch_dynamic_routing(u_hat, iters):
  """Procedure 1 on a batch: u_hat [B, N_in, N_out, D] -> v [B, N_out, D]."""
  logits = torch.zeros(u_hat.shape[:3], device=u_hat.device)
  for it in range(iters):
    c = logits.softmax(dim=-1)
    v = torch_squash(torch.einsum("bij,bijd->bjd", c, u_hat))
    if it < iters - 1:
      logits = logits + torch.einsum("bijd,bjd->bij", u_hat, v)
  return v


class TorchCapsNet(nn.Module):
  """The paper's MNIST CapsNet, written the way a PyTorch user would."""

  def __init__(self, iters=3):
    super().__init__()
    self.iters = iters
    self.conv1 = nn.Conv2d(1, 256, 9)
    self.primary = nn.Conv2d(256, 256, 9, stride=2)
    self.W = nn.Parameter(0.01 * torch.randn(1152, 10, 16, 8))
    self.decoder = nn.Sequential(nn.Linear(160, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                                 nn.Linear(1024, 784), nn.Sigmoid())

  def forward(self, x, labels):
    x = torch.relu(self.conv1(x))
    u = self.primary(x)  # [B, 256, 6, 6]
    b_ = u.shape[0]
    u = torch_squash(u.permute(0, 2, 3, 1).reshape(b_, -1, 8))
    v = torch_dynamic_routing(torch.einsum("ijdk,bik->bijd", self.W, u), self.iters)
    lengths = torch.sqrt((v * v).sum(-1) + 1e-7)
    mask = nn.functional.one_hot(labels, 10).float()
    recon = self.decoder((v * mask[..., None]).reshape(b_, -1))
    return lengths, recon, mask


def torch_train_step(model, opt, images, labels):
  lengths, recon, onehot = model(images, labels)
  margin = (onehot * torch.clamp(0.9 - lengths, min=0) ** 2
            + 0.5 * (1 - onehot) * torch.clamp(lengths - 0.1, min=0) ** 2).sum(-1)
  rec = ((recon - images.reshape(images.shape[0], -1)) ** 2).sum(-1)
  loss = (margin + 0.0005 * rec).mean()
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss


def gemm_gflops(n=4096, reps=3):
  """Best-of-`reps` fp32 GFLOP/s of an n x n matmul in JAX and in PyTorch."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  ta = torch.randn(n, n, device=DEVICE)
  ta @ ta
  _sync()
  jt, tt = [], []
  for _ in range(reps):
    t0 = time.perf_counter(); jax.block_until_ready(mm(a)); jt.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); ta @ ta; _sync(); tt.append(time.perf_counter() - t0)
  flops = 2 * n ** 3
  return flops / min(jt) / 1e9, flops / min(tt) / 1e9


def _sync():
  if DEVICE == "cuda":
    torch.cuda.synchronize()


def alternate(jax_step, torch_step, rounds: int, steps_per_round: int) -> tuple[float, float]:
  """Median seconds of `jax_step()` and `torch_step()` (each runs one blocking step), timed in
  alternating rounds after one untimed step per switch."""
  jax_times, torch_times = [], []
  for _ in range(rounds):
    # The untimed step after each switch keeps either framework from paying for the other's
    # threads still spinning down or for its own caches being cold.
    for step, times in ((jax_step, jax_times), (torch_step, torch_times)):
      step()
      for _ in range(steps_per_round):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
  return statistics.median(jax_times), statistics.median(torch_times)


def compare(batch_size, rounds, steps_per_round):
  """Whole-network train steps: capsjax (the loop's program, one step per dispatch) vs PyTorch
  at `batch_size`."""
  bench = train_throughput.build(batch_size, 3)
  images, labels = bench.split.images, bench.split.labels
  chunk = bench.source.chunk(0, 1)  # prepared once: every timed step trains on step 0's batch
  box = {"state": bench.state}

  def jax_step():
    box["state"] = train_throughput.run_chunk(bench, box["state"], chunk)

  torch.manual_seed(0)
  tmodel = TorchCapsNet().to(DEVICE)
  topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
  t_images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous().to(DEVICE)
  t_labels = torch.from_numpy(labels).long().to(DEVICE)

  def torch_step():
    torch_train_step(tmodel, topt, t_images, t_labels)
    _sync()

  j, t = alternate(jax_step, torch_step, rounds, steps_per_round)
  return {"batch_size": batch_size, "capsjax_images_per_sec": batch_size / j,
          "torch_images_per_sec": batch_size / t, "capsjax_over_torch": t / j,
          "capsjax_step_ms": 1e3 * j, "torch_step_ms": 1e3 * t}


def compare_routing(batch_size, rounds, steps_per_round, iters=3):
  """Dynamic routing alone, forward + backward on [B, 1152, 10, 16] votes."""
  shape = (batch_size, 1152, 10, 16)
  u_hat = 0.05 * jax.random.normal(jax.random.key(0), shape)
  grad = jax.jit(jax.grad(lambda u: jnp.sum(jax.vmap(lambda x: dynamic_routing(x, iters).v)(u))))
  jax.block_until_ready(grad(u_hat))
  t_u_hat = torch.from_numpy(jax.device_get(u_hat).copy()).to(DEVICE).requires_grad_(True)

  def torch_step():
    t_u_hat.grad = None
    torch_dynamic_routing(t_u_hat, iters).sum().backward()
    _sync()

  j, t = alternate(lambda: jax.block_until_ready(grad(u_hat)), torch_step, rounds,
                   steps_per_round)
  return {"batch_size": batch_size, "capsjax_routing_ms": 1e3 * j, "torch_routing_ms": 1e3 * t,
          "capsjax_over_torch": t / j}


def main(argv=None):
  tune_host_allocator()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-sizes", default="32,128")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="train steps per framework per round")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)
  jax_peak, torch_peak = gemm_gflops()
  peak = max(jax_peak, torch_peak)
  flops_img = capsnet_flops_per_image()
  results, routing_results = [], []
  for bs in [int(b) for b in args.batch_sizes.split(",")]:
    r = compare(bs, args.rounds, args.steps)
    for fw in ("capsjax", "torch"):
      r[f"{fw}_fraction_of_gemm_peak"] = r[f"{fw}_images_per_sec"] * flops_img / 1e9 / peak
    results.append(r)
    print(f"batch {bs:4d}: capsjax {r['capsjax_images_per_sec']:7.1f} img/s "
          f"({r['capsjax_fraction_of_gemm_peak']:.0%} of GEMM peak)   torch "
          f"{r['torch_images_per_sec']:7.1f} img/s ({r['torch_fraction_of_gemm_peak']:.0%})   "
          f"ratio {r['capsjax_over_torch']:.2f}x")
    rr = compare_routing(bs, args.rounds, args.steps)
    routing_results.append(rr)
    print(f"batch {bs:4d}: dynamic routing alone (fwd+bwd, 3 iterations): capsjax "
          f"{rr['capsjax_routing_ms']:7.1f} ms   torch {rr['torch_routing_ms']:7.1f} ms   "
          f"ratio {rr['capsjax_over_torch']:.2f}x")
  print(json.dumps({"gemm_gflops_jax": jax_peak, "gemm_gflops_torch": torch_peak,
                    "train_flops_per_image": flops_img, "backend": jax.default_backend(),
                    "torch_version": torch.__version__, "jax_version": jax.__version__,
                    "torch_device": DEVICE, "results": results,
                    "routing_results": routing_results}))


if __name__ == "__main__":
  main()
