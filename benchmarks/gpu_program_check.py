"""The GPU programs of the `paper` preset, checked on a CPU-only machine before a GPU is lent.

    python benchmarks/gpu_program_check.py [--platform cuda] [--config paper]

Exports the loop's training chunk (`steps.make_train_chunk`, K = the preset's steps per
dispatch) and the evaluation step (`steps.make_eval_step`, the GPU's default eval batch) for the
CUDA platform with `jax.export`, in fp32 and bf16 (`--precision`), on MNIST-shaped inputs (the
resident 60,000/10,000-image splits), and reads each program's StableHLO:

- native_convolutions: `stablehlo.convolution` ops (what cuDNN runs);
- gather_convolutions: ops of `capsjax.nn.conv`'s patch gather (the CPU formulation) that ended
  up in the program;
- conv_dtypes / dot_dtypes: {element type of the first operand: count} of the convolutions and
  `stablehlo.dot_general` ops;
- while_loops, and unknown_trip_count_loops: loops whose condition is not a comparison of the
  loop counter with a constant (XLA:GPU runs such a loop by copying its condition to the host
  after every iteration);
- conditionals, and dynamic_conditionals: those whose branch depends on a value computed at run
  time (XLA:GPU copies such a predicate to the host before it can go on), not on the platform
  (`jax.lax.platform_dependent` leaves conditionals on constants, which XLA removes);
- host_callbacks: custom calls into Python (`jax.pure_callback`, `jax.debug.*`);
- donated_inputs: arguments whose buffers the program may reuse (the training state).

Also the compiled memory footprint of the training chunk on this CPU
(`compiled.memory_analysis()`) at batch 128 and 512, an estimate of what it needs on a device.
The last stdout line is one JSON object; `check(report)` lists what breaks the expectations
(tests/test_gpu_program.py asserts it is empty).
"""

import argparse
import collections
import dataclasses
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib.mlir import ir

from capsjax import data
from capsjax.core import streams
from capsjax.data import datasets
from capsjax.nn.conv import PATCH_GATHER_SCOPE
from capsjax.train import archs, presets, steps
from capsjax.train.model_state import create_state, model_settings

TRAIN_EXAMPLES, TEST_EXAMPLES, IMAGE = 60_000, 10_000, (28, 28, 1)  # MNIST's resident splits
PRECISIONS = ("fp32", "bf16")
_CALLBACK_TARGETS = ("callback",)  # xla_python_cpu_callback, xla_ffi_python_gpu_callback, ...


def _programs(config, eval_batch: int):
  """{name: (jitted program, argument shapes)} of the loop's training chunk and eval step."""
  split = data.Split(np.zeros((1, *IMAGE), np.uint8), np.zeros((1,), np.int32), 10)
  dataset = datasets.get(config.dataset)
  graphdef, state = create_state(model_settings(config, split), config)
  loss_fn = dataset.loss(archs.get(config.arch), config)
  chunk = steps.make_train_chunk(graphdef, loss_fn, dataset.builder(config, "train", split))
  evaluate = steps.make_eval_step(graphdef, loss_fn, dataset.builder(config, "test", split))
  shape = lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  capacity = config.steps_per_dispatch or config.log_every
  state_shapes = jax.tree.map(shape, state)
  train_args = (state_shapes, jax.ShapeDtypeStruct((TRAIN_EXAMPLES, *IMAGE), jnp.uint8),
                jax.ShapeDtypeStruct((TRAIN_EXAMPLES,), jnp.int32),
                jax.ShapeDtypeStruct((capacity, config.batch_size), jnp.int32), scalar, scalar,
                jax.tree.map(shape, streams.run_keys(config.seed)))
  eval_args = (state_shapes, jax.ShapeDtypeStruct((TEST_EXAMPLES, *IMAGE), jnp.uint8),
               jax.ShapeDtypeStruct((TEST_EXAMPLES,), jnp.int32),
               jax.ShapeDtypeStruct((eval_batch,), jnp.int32),
               jax.ShapeDtypeStruct((eval_batch,), jnp.bool_))
  return {"train_chunk": (chunk, train_args), "eval_step": (evaluate, eval_args)}


def _walk(operation):
  """Every operation nested in `operation` (regions, blocks), depth first."""
  for region in operation.regions:
    for block in region.blocks:
      for op in block.operations:
        yield op
        yield from _walk(op)


def _element_type(value) -> str:
  return str(ir.RankedTensorType(value.type).element_type)


def _known_trip_count(while_op) -> bool:
  """True if the loop's condition is `counter <cmp> constant` (a trip count XLA can prove)."""
  cond = while_op.regions[0].blocks[0]
  ret = list(cond.operations)[-1]
  if len(ret.operands) != 1:
    return False
  compare = ret.operands[0].owner
  if not hasattr(compare, "name") or compare.name != "stablehlo.compare":
    return False
  kinds = []
  for operand in compare.operands:
    owner = operand.owner
    if isinstance(owner, ir.Block):
      kinds.append("arg")
    else:
      kinds.append("constant" if owner.name == "stablehlo.constant" else owner.name)
  return sorted(kinds) == ["arg", "constant"]


def _static(value) -> bool:
  """True if `value` is known when the program is compiled: a constant, or what a conditional on
  such a value returns from constants (`jax.lax.platform_dependent`'s platform index)."""
  owner = value.owner
  if isinstance(owner, ir.Block):
    return False
  if owner.name == "stablehlo.constant":
    return True
  if owner.name in ("stablehlo.case", "stablehlo.if"):
    returns = [list(region.blocks[0].operations)[-1] for region in owner.regions]
    return _static(owner.operands[0]) and all(_static(v) for r in returns for v in r.operands)
  if owner.name in ("stablehlo.convert", "stablehlo.reshape", "stablehlo.broadcast_in_dim"):
    return _static(owner.operands[0])
  return False


def analyse(text: str) -> dict[str, Any]:
  """The report fields of one program from its StableHLO text."""
  with jax_mlir.make_ir_context():
    module = ir.Module.parse(text)
    ops = [op for top in module.body.operations for op in [top, *_walk(top)]]
    names = [op.name for op in ops]
    conv_dtypes, dot_dtypes = collections.Counter(), collections.Counter()
    for op in ops:
      if op.name == "stablehlo.convolution":
        conv_dtypes[_element_type(op.operands[0])] += 1
      elif op.name == "stablehlo.dot_general":
        dot_dtypes[_element_type(op.operands[0])] += 1
    loops = [op for op in ops if op.name == "stablehlo.while"]
    branches = [op for op in ops if op.name in ("stablehlo.case", "stablehlo.if")]
    callbacks = [op for op in ops if op.name == "stablehlo.custom_call" and any(
        t in str(op.attributes["call_target_name"]) for t in _CALLBACK_TARGETS)]
    gathers = [op for op in ops if op.name in ("stablehlo.gather", "stablehlo.scatter")
               and PATCH_GATHER_SCOPE in str(op.location)]
    main = next(op for op in module.body.operations
                if str(op.attributes["sym_name"]).strip('"') == "main")
    donated = 0
    if "arg_attrs" in main.attributes:
      for attrs in main.attributes["arg_attrs"]:
        donated += any(k in str(attrs) for k in ("tf.aliasing_output", "jax.buffer_donor"))
    return {"native_convolutions": names.count("stablehlo.convolution"),
            "gather_convolutions": len(gathers),
            "conv_dtypes": dict(conv_dtypes), "dot_dtypes": dict(dot_dtypes),
            "while_loops": len(loops),
            "unknown_trip_count_loops": sum(not _known_trip_count(op) for op in loops),
            "conditionals": len(branches),
            "dynamic_conditionals": sum(not _static(op.operands[0]) for op in branches),
            "host_callbacks": len(callbacks), "donated_inputs": donated}


def export_programs(config_name: str = "paper", platform: str = "cuda",
                    precisions=PRECISIONS) -> dict[str, Any]:
  """{program: {precision: analyse(...)}} of the preset's programs exported for `platform`."""
  report: dict[str, Any] = collections.defaultdict(dict)
  eval_batch = steps.DEFAULT_EVAL_BATCH_SIZE if platform != "cpu" else \
      steps.default_eval_batch_size("cpu")
  for precision in precisions:
    config = dataclasses.replace(presets.get(config_name), precision=precision)
    for name, (program, args) in _programs(config, eval_batch).items():
      try:
        exported = export.export(program, platforms=[platform])(*args)
      except NotImplementedError as e:  # jax.export refuses programs with host callbacks
        report[name][precision] = {"export_error": str(e), "host_callbacks": int(
            "callback" in str(e))}
        continue
      report[name][precision] = analyse(exported.mlir_module())
  return dict(report)


def memory_footprint(config_name: str = "paper", batch_sizes=(128, 512)) -> dict[str, Any]:
  """{batch: MB} of the training chunk compiled for this CPU (arguments, outputs, temps)."""
  out = {}
  for b in batch_sizes:
    config = dataclasses.replace(presets.get(config_name), batch_size=b)
    program, args = _programs(config, steps.default_eval_batch_size("cpu"))["train_chunk"]
    m = program.lower(*args).compile().memory_analysis()
    out[str(b)] = {"argument_mb": m.argument_size_in_bytes / 1e6,
                   "output_mb": m.output_size_in_bytes / 1e6,
                   "temp_mb": m.temp_size_in_bytes / 1e6,
                   "alias_mb": m.alias_size_in_bytes / 1e6,
                   "total_mb": (m.argument_size_in_bytes + m.output_size_in_bytes
                                + m.temp_size_in_bytes - m.alias_size_in_bytes) / 1e6}
  return out


def check(report: dict[str, Any]) -> list[str]:
  """What in `report` breaks the expectations of a GPU program: native convolutions only (no
  patch gather), bf16 convolutions and matmuls where bf16 is asked for, no loop of unknown trip
  count or conditional on a run-time value, no host callback, the training state donated."""
  problems = []
  for program, by_precision in report.items():
    for precision, r in by_precision.items():
      where = f"{program} ({precision})"
      if "export_error" in r:
        problems.append(f"{where}: not exported: {r['export_error']}")
        continue
      if r["native_convolutions"] == 0 or r["gather_convolutions"]:
        problems.append(f"{where}: {r['native_convolutions']} native and "
                        f"{r['gather_convolutions']} gather convolutions")
      if precision == "bf16" and set(r["conv_dtypes"]) != {"bf16"}:
        problems.append(f"{where}: convolutions in {r['conv_dtypes']}")
      if precision == "bf16" and "bf16" not in r["dot_dtypes"]:
        problems.append(f"{where}: no bf16 matmul ({r['dot_dtypes']})")
      if precision == "fp32" and set(r["conv_dtypes"]) - {"f32"}:
        problems.append(f"{where}: convolutions in {r['conv_dtypes']}")
      if r["unknown_trip_count_loops"]:
        problems.append(f"{where}: {r['unknown_trip_count_loops']} loop(s) of unknown trip count")
      if r["dynamic_conditionals"]:
        problems.append(f"{where}: {r['dynamic_conditionals']} conditional(s) on a run-time value")
      if r["host_callbacks"]:
        problems.append(f"{where}: {r['host_callbacks']} host callback(s)")
      if program == "train_chunk" and r["donated_inputs"] == 0:
        problems.append(f"{where}: the state is not donated")
  return problems


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--platform", default="cuda", choices=("cuda", "rocm", "tpu", "cpu"),
                 help="the platform to export for (default: cuda)")
  p.add_argument("--config", default="paper", help="the preset whose programs are checked")
  p.add_argument("--no-memory", action="store_true", help="skip the CPU memory footprint")
  args = p.parse_args(argv)
  if args.config not in presets.available():
    p.error(f"--config: unknown preset {args.config!r}; one of {', '.join(presets.available())}")
  report = export_programs(args.config, args.platform)
  problems = check(report)
  for program, by_precision in report.items():
    for precision, r in by_precision.items():
      print(f"{program:<12} {precision}: " + ", ".join(f"{k}={v}" for k, v in r.items()))
  footprint = {} if args.no_memory else memory_footprint(args.config)
  for b, m in footprint.items():
    print(f"train_chunk at batch {b} on this CPU: {m['total_mb']:.0f} MB "
          f"(temporaries {m['temp_mb']:.0f} MB)")
  print("\n".join(f"PROBLEM: {x}" for x in problems) or "all expectations hold")
  print(json.dumps({"platform": args.platform, "config": args.config, "jax_version": jax.__version__,
                    "programs": report, "memory_footprint": footprint, "problems": problems}))
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
