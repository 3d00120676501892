"""The GPU program, checked on this CPU-only machine: benchmarks/gpu_program_check.py exports the
`paper` preset's training chunk and eval step for CUDA and reads their StableHLO."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_program_check  # noqa: E402


def _analysed(fn, *args, platform="cuda"):
  return gpu_program_check.analyse(
      export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module())


def test_the_paper_programs_for_cuda_meet_the_expectations():
  """As a user runs it: native convolutions only, bf16 where --precision bf16 promises it, a loop
  of constant trip count, no conditional on a run-time value, no host callback, state donated."""
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_program_check.py")],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["problems"] == [] and report["platform"] == "cuda"
  train, evaluate = report["programs"]["train_chunk"], report["programs"]["eval_step"]
  # Conv1 and PrimaryCaps: 2 forward, 3 backward (Conv1's input needs no gradient).
  assert train["fp32"]["conv_dtypes"] == {"f32": 5} and train["bf16"]["conv_dtypes"] == {"bf16": 5}
  assert evaluate["fp32"]["conv_dtypes"] == {"f32": 2} and evaluate["bf16"]["conv_dtypes"] == {
      "bf16": 2}
  for program in (train, evaluate):
    for r in program.values():
      assert r["gather_convolutions"] == r["unknown_trip_count_loops"] == 0
      assert r["dynamic_conditionals"] == r["host_callbacks"] == 0
  assert train["fp32"]["while_loops"] == 1  # the K-step loop
  assert "bf16" in train["bf16"]["dot_dtypes"] and set(train["fp32"]["dot_dtypes"]) == {"f32"}
  assert train["fp32"]["donated_inputs"] > 0 and evaluate["fp32"]["donated_inputs"] == 0
  footprint = report["memory_footprint"]
  assert set(footprint) == {"128", "512"}
  assert 0 < footprint["128"]["total_mb"] < footprint["512"]["total_mb"]


def test_the_same_programs_for_this_cpu_take_the_gemm_convolution():
  """The platform decides: lowered for the CPU, the convolutions are patch gathers + matmuls and
  the K-step loop skips inactive steps with a branch (so the GPU expectations fail there)."""
  report = gpu_program_check.export_programs("paper", "cpu", precisions=("fp32",))
  train = report["train_chunk"]["fp32"]
  assert train["native_convolutions"] == 0 and train["gather_convolutions"] > 0
  assert train["dynamic_conditionals"] == 1 and train["unknown_trip_count_loops"] == 0
  problems = gpu_program_check.check(report)
  assert any("0 native" in p for p in problems) and any("run-time value" in p for p in problems)


def test_analysis_finds_a_loop_of_unknown_trip_count():
  x = jnp.ones(3)

  def data_dependent(x, n):  # the K-step loop before it had a constant trip count
    return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 2), (0, x))[1]

  def constant(x, n):
    return jax.lax.fori_loop(0, 5, lambda i, c: jnp.where(i < n, c * 2, c), x)

  n = jnp.int32(3)
  assert _analysed(data_dependent, x, n)["unknown_trip_count_loops"] == 1
  r = _analysed(constant, x, n)
  assert r["while_loops"] == 1 and r["unknown_trip_count_loops"] == 0


def test_analysis_finds_conditionals_callbacks_and_donation():
  x = jnp.ones(3)
  branch = _analysed(lambda x: jax.lax.cond(x[0] > 0, lambda: x, lambda: -x), x)
  assert branch["dynamic_conditionals"] == 1
  platform = _analysed(lambda x: jax.lax.platform_dependent(x, cpu=jnp.sin, default=jnp.cos), x)
  assert platform["dynamic_conditionals"] == 0
  # jax.export refuses a host callback (and lowering one for a GPU needs a GPU): lowered here.
  callback = gpu_program_check.analyse(jax.jit(lambda x: jax.pure_callback(
      np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)).lower(x).as_text())
  assert callback["host_callbacks"] == 1
  donated = gpu_program_check.analyse(export.export(
      jax.jit(lambda x: x + 1, donate_argnums=0), platforms=["cuda"])(x).mlir_module())
  assert donated["donated_inputs"] == 1


@pytest.mark.parametrize("args, message", [
    (["--config", "nope"], "--config: unknown preset 'nope'"),
    (["--platform", "gpu"], "argument --platform: invalid choice: 'gpu'"),
])
def test_bad_arguments_are_one_error_line(args, message):
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_program_check.py"),
                         *args], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and message in proc.stderr
