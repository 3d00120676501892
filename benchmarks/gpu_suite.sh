#!/usr/bin/env bash
# The GPU benchmark suite, one command, within a time budget (run from the repo root).
#
#   bash benchmarks/gpu_suite.sh [OUTDIR]        # OUTDIR: $OUT if set, else benchmarks/results/gpu
#
# Prepare .gpu/ first, here, with benchmarks/gpu_prepare.sh; then on the GPU machine (device
# tool) carry [".gpu"] and run `bash benchmarks/gpu_suite.sh`. Stages, in priority order (the
# paper's number first): env, paper_minutes (the `paper_short` preset: seconds per epoch and the
# test accuracy reached), throughput (images/s at batch 128/512 in fp32 and bf16, and K=50 steps
# per dispatch against K=1), compare_pytorch, epoch_time, routing_cost, tests. Each gets
# min(its cap, the time left less a reserve); one that fails or times out is recorded so and the
# suite goes on (except env: without the data code the rest cannot run). After every stage it
# rewrites OUTDIR/gpu_suite.json and OUTDIR/logs.tar.gz; at the end it prints a summary table
# and, as its last line, the JSON.
#
# Environment: SUITE_SECONDS (540) the whole budget; SUITE_RESERVE (30) kept back for the
# reports; PAPER_MINUTES (2.5) of training; GPU_SUITE_STAGES (all) a comma-separated subset to run;
# GPU_SUITE_SMOKE=1 shrinks every stage to check the plumbing on a CPU; PYTHON (python3, or
# .venv/bin/python where there is one); GPU_SUITE_ALLOW_CPU=1 goes on when JAX finds no GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
T0=$(date +%s)

BUDGET=${SUITE_SECONDS:-540}
RESERVE=${SUITE_RESERVE:-30}
PAPER_MINUTES=${PAPER_MINUTES:-2.5}
SMOKE=${GPU_SUITE_SMOKE:-0}
ALL_STAGES=env,paper_minutes,throughput,compare_pytorch,epoch_time,routing_cost,tests
STAGES=${GPU_SUITE_STAGES:-$ALL_STAGES}
OUTDIR=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) \
  || { echo "gpu_suite: error: cannot create or enter OUTDIR $OUTDIR" >&2; exit 2; }
JSON=$OUTDIR/gpu_suite.json
WORK=$(mktemp -d /tmp/gpu_suite.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
rm -f "$JSON" "$OUTDIR/logs.tar.gz" "$OUTDIR/routing_cost.json"

if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
REPORT=("$PY" "$ROOT/benchmarks/gpu_suite_report.py")
export PYTHONUNBUFFERED=1
# One compilation cache for every stage: the paper run reuses the epoch_time programs.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}
log() { echo "[gpu_suite $(( $(date +%s) - T0 ))s] $*"; }
json_list() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; }

# --- setup: carried wheels, PYTHONPATH, data dir ------------------------------------------------
SETUP_NOTE="no .gpu/wheels: using the environment's packages"
py_version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  want=$("$PY" -c 'import json; print(json.load(open(".gpu/manifest.json"))["python_version"])' \
         2>/dev/null || echo 3.12)
  if [[ $py_version == "$want" ]]; then
    if timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
         --upgrade --target /tmp/site .gpu/wheels/*.whl > "$LOGS/setup_pip.log" 2>&1; then
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      SETUP_NOTE="installed $(ls .gpu/wheels/*.whl | wc -l) wheels from .gpu/wheels into /tmp/site"
    else
      SETUP_NOTE="pip install of .gpu/wheels FAILED (see logs/setup_pip.log)"
    fi
  else
    SETUP_NOTE="skipped .gpu/wheels: they are for Python $want, this is $py_version"
  fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if [[ -d .gpu/tensorflow_datasets ]]; then
  export TFDS_DATA_DIR=$ROOT/.gpu/tensorflow_datasets
elif [[ $SMOKE == 1 && -z ${TFDS_DATA_DIR:-} && -d ../shared/tensorflow_datasets ]]; then
  TFDS_DATA_DIR=$(cd ../shared/tensorflow_datasets && pwd); export TFDS_DATA_DIR
fi
log "$SETUP_NOTE; python $PY ($py_version); TFDS_DATA_DIR=${TFDS_DATA_DIR:-unset}; smoke=$SMOKE"
"${REPORT[@]}" record "$JSON" - --seconds 0 --top "setup=$SETUP_NOTE" \
  --top "data_dir=${TFDS_DATA_DIR:-}" --top "python=$PY" --top "budget_seconds=$BUDGET" \
  --top "smoke=$([[ $SMOKE == 1 ]] && echo true || echo false)" >/dev/null

# --- time keeping and stage plumbing ------------------------------------------------------------
left() { echo $(( BUDGET - RESERVE - ($(date +%s) - T0) )); }
wanted() { [[ ",$STAGES," == *",$1,"* ]]; }

# begin_stage NAME CAP: sets STAGE_END (epoch seconds); returns 1 if under 10 s are left for it.
begin_stage() {
  STAGE=$1; STAGE_T0=$(date +%s); PARTS=(); OKRC=()
  local cap=$2 avail
  avail=$(left)
  (( cap > avail )) && cap=$avail
  STAGE_END=$(( STAGE_T0 + cap ))
  if (( cap < 10 )); then
    record_stage --status skipped --reason "no time left (${avail} s of the budget)"
    return 1
  fi
  log "$STAGE: started (up to ${cap} s)"
  # A stage the suite is killed in reads as a timeout.
  "${REPORT[@]}" record "$JSON" "$STAGE" --seconds 0 --status timeout \
    --reason "started; the suite stopped before this stage ended" >/dev/null
  return 0
}

# run_part NAME CAP [--signal GRACE] CMD...: runs CMD, stdout and stderr to LOGS/STAGE.NAME.out
# and .err, under min(CAP, the stage's time left); sets RC (124: timed out). --signal: stop it
# with SIGINT (not TERM), and KILL it GRACE seconds later if it is still running.
run_part() {
  local name=$1 cap=$2 t; shift 2
  local topts=(-k 10)
  if [[ $1 == --signal ]]; then topts=(-s INT -k "$2"); shift 2; fi
  t=$(( STAGE_END - $(date +%s) ))
  (( cap < t )) && t=$cap
  local out=$LOGS/$STAGE.$name.out err=$LOGS/$STAGE.$name.err
  printf '+ %s\n' "$*" > "$err"
  if (( t < 3 )); then
    echo "gpu_suite: no time left for $name" >> "$err"; : > "$out"; RC=124
  else
    timeout "${topts[@]}" "$t" "$@" > "$out" 2>> "$err" < /dev/null
    RC=$?
  fi
  PARTS+=(--part "$name" "$RC" "$out" "$err")
  log "  $name: exit $RC after $(( $(date +%s) - STAGE_T0 )) s of the stage"
}

record_stage() {
  "${REPORT[@]}" record "$JSON" "$STAGE" --seconds $(( $(date +%s) - STAGE_T0 )) \
    "${PARTS[@]}" "${OKRC[@]}" "$@"
  tar -czf "$OUTDIR/logs.tar.gz.tmp" -C "$WORK" logs \
    && mv "$OUTDIR/logs.tar.gz.tmp" "$OUTDIR/logs.tar.gz"
}

skip_rest() {  # skip_rest REASON: records every wanted stage not yet run as skipped
  local s
  for s in paper_minutes throughput compare_pytorch epoch_time routing_cost tests; do
    if wanted "$s"; then STAGE=$s; STAGE_T0=$(date +%s); PARTS=(); OKRC=()
      record_stage --status skipped --reason "$1"; fi
  done
}

finish() {
  log "done in $(( $(date +%s) - T0 )) s (budget $BUDGET s); results in $OUTDIR"
  ls "$OUTDIR" | sed 's/^/  /'
  "${REPORT[@]}" summary "$JSON"
  rm -rf "$WORK"
  exit 0
}
trap 'log "interrupted"; finish' INT TERM

# CAPS: the most seconds of each stage, by stage: env, epoch_time, throughput, paper_minutes,
# compare_pytorch, routing_cost, tests (they run in the priority order above).
if [[ $SMOKE == 1 ]]; then
  EPOCH_ARGS=(--config paper --batch-size 128 --epochs 1 --max-steps 3)
  THROUGHPUT_BATCHES=(8 16); THROUGHPUT_STEPS=2; DISPATCH_K=2
  PAPER_SECONDS=${PAPER_SECONDS:-45}
  # --log-every 2: the run dispatches log-every steps at a time, and stops only between them.
  PAPER_LIMITS=(--train-examples 1024 --test-examples 256 --log-every 2 --no-progress)
  EPOCH_IMAGES=1024
  EVAL_LIMITS=(--test-examples 256 --no-progress)
  COMPARE_ARGS=(--batch-sizes 8 --rounds 1 --steps 1)
  ROUTING_ARGS=(--rules dynamic --iters 1 --n-in 288 --batch 8 --repeats 1 --memory-batch 8)
  TEST_CMD=("$PY" -m pytest -q -p no:cacheprovider -rfE tests/test_squash.py)
  CAPS=(60 200 90 150 90 60 120)
else
  EPOCH_ARGS=(--config paper --batch-size 128 --epochs 1)
  THROUGHPUT_BATCHES=(128 512); THROUGHPUT_STEPS=20; DISPATCH_K=50
  PAPER_SECONDS=${PAPER_SECONDS:-$(awk -v m="$PAPER_MINUTES" 'BEGIN {printf "%d", m * 60}')}
  PAPER_LIMITS=(--no-progress)
  EPOCH_IMAGES=59904  # an epoch of MNIST at batch 128: 468 steps
  EVAL_LIMITS=(--no-progress)
  COMPARE_ARGS=(--batch-sizes 32,128 --rounds 3 --steps 5)
  ROUTING_ARGS=(--iters 1,3 --n-in 1152 --batch 32,128 --repeats 5)
  CAPS=(90 240 180 $(( PAPER_SECONDS + 150 )) 120 90 600)
fi
[[ -n ${TFDS_DATA_DIR:-} ]] && DATA_ARGS=(--data-dir "$TFDS_DATA_DIR") || DATA_ARGS=()

# --- a. env -------------------------------------------------------------------------------------
if wanted env && begin_stage env "${CAPS[0]}"; then
  need_gpu=(); [[ $SMOKE == 1 || ${GPU_SUITE_ALLOW_CPU:-0} == 1 ]] || need_gpu=(--need-gpu)
  run_part env "${CAPS[0]}" "${REPORT[@]}" env --manifest "$ROOT/.gpu/manifest.json" \
    "${need_gpu[@]}"
  env_rc=$RC
  record_stage --flatten
  if (( env_rc != 0 )); then
    skip_rest "env failed: the data code or the GPU is not usable (see env's result)"
    finish
  fi
fi

# --- b. paper_minutes ---------------------------------------------------------------------------
if wanted paper_minutes && begin_stage paper_minutes "${CAPS[3]}"; then
  W=$WORK/paper_run
  rm -rf "$W"
  # SIGINT: the run saves a checkpoint and exits (timeout reports 124); KILLed 40 s later if not.
  train_cap=$(( STAGE_END - $(date +%s) - 100 ))
  (( train_cap > PAPER_SECONDS )) && train_cap=$PAPER_SECONDS
  run_part paper_train "$train_cap" --signal 40 "$PY" -m capsjax train --config paper_short \
    --workdir "$W" "${DATA_ARGS[@]}" "${PAPER_LIMITS[@]}"
  OKRC=(--ok-rc paper_train=124,130)  # stopped by the SIGINT as planned
  run_part paper_eval "${CAPS[3]}" "$PY" -m capsjax eval --workdir "$W" "${DATA_ARGS[@]}" \
    "${EVAL_LIMITS[@]}"
  [[ -f $W/metrics.jsonl ]] && cp "$W/metrics.jsonl" "$LOGS/paper_metrics.jsonl"
  record_stage --parse paper --workdir "$W" --epoch-images "$EPOCH_IMAGES" \
    --minutes "$(awk -v s="$train_cap" 'BEGIN {printf "%.2f", s / 60}')"
  rm -rf "$W"
fi

# --- c. throughput ------------------------------------------------------------------------------
if wanted throughput && begin_stage throughput "${CAPS[2]}"; then
  # One step per dispatch at each batch and precision, then the K-step loop (K = DISPATCH_K)
  # at the first batch: the loop's trip count is a constant, so K steps queue without a host
  # round trip between them (benchmarks/gpu_program_check.py checks this on a CPU).
  for prec in fp32 bf16; do
    for b in "${THROUGHPUT_BATCHES[@]}"; do
      run_part "${b}_${prec}" "${CAPS[2]}" "$PY" benchmarks/train_throughput.py --batch-size "$b" \
        --steps "$THROUGHPUT_STEPS" --precision "$prec"
    done
  done
  run_part "${THROUGHPUT_BATCHES[0]}_fp32_k${DISPATCH_K}" "${CAPS[2]}" "$PY" \
    benchmarks/train_throughput.py --batch-size "${THROUGHPUT_BATCHES[0]}" \
    --steps $(( 2 * DISPATCH_K )) --steps-per-dispatch "$DISPATCH_K"
  record_stage
fi

# --- d. compare_pytorch -------------------------------------------------------------------------
if wanted compare_pytorch && begin_stage compare_pytorch "${CAPS[4]}"; then
  if ! "$PY" -c "import torch" > /dev/null 2>&1; then
    record_stage --status skipped --reason "PyTorch is not installed here"
  else
    run_part compare_pytorch "${CAPS[4]}" "$PY" benchmarks/compare_pytorch.py "${COMPARE_ARGS[@]}"
    record_stage --flatten
  fi
fi

# --- e. epoch_time ------------------------------------------------------------------------------
if wanted epoch_time && begin_stage epoch_time "${CAPS[1]}"; then
  if [[ ! -f benchmarks/epoch_time.py ]]; then
    record_stage --status failed --reason "missing: benchmarks/epoch_time.py does not exist"
  else
    run_part epoch_time_help 60 "$PY" benchmarks/epoch_time.py --help
    help_out=$LOGS/epoch_time.epoch_time_help.out
    # Smoke: 3 steps make two timed log windows only with a log line every step.
    if [[ $SMOKE == 1 ]] && grep -q -- '--log-every' "$help_out"; then
      EPOCH_ARGS+=(--log-every 1)
    fi
    if (( RC == 0 )) && grep -q -- '--pipeline' "$help_out"; then
      PARTS=()
      # The device-resident pipeline in float32 first (the figure against the 2 s goal), then
      # host batches, then bfloat16; each gets at most a third of what is left of the stage.
      variants=("device --precision fp32" "host --precision fp32" "device --precision bf16")
      (( SMOKE == 1 )) && variants=("host --precision fp32")  # each ends in a full test eval
      for i in "${!variants[@]}"; do
        read -r pipe _ prec <<< "${variants[$i]}"
        share=$(( (STAGE_END - $(date +%s)) / (${#variants[@]} - i) ))
        run_part "${pipe}_${prec}" "$share" "$PY" benchmarks/epoch_time.py "${EPOCH_ARGS[@]}" \
          "${DATA_ARGS[@]}" --pipeline "$pipe" --precision "$prec"
      done
    else
      help_rc=$RC; PARTS=()
      run_part default "${CAPS[1]}" "$PY" benchmarks/epoch_time.py "${EPOCH_ARGS[@]}" \
        "${DATA_ARGS[@]}"
      [[ $help_rc != 0 ]] && log "  (epoch_time.py --help exited $help_rc)"
    fi
    record_stage
  fi
fi

# --- f. routing_cost ----------------------------------------------------------------------------
if wanted routing_cost && begin_stage routing_cost "${CAPS[5]}"; then
  RC_OUT=$WORK/routing_cost
  run_part routing_cost "${CAPS[5]}" "$PY" benchmarks/routing_cost.py "${ROUTING_ARGS[@]}" \
    --no-plots --out "$RC_OUT"
  if [[ -f $RC_OUT/routing_cost.json ]]; then
    cp "$RC_OUT/routing_cost.json" "$OUTDIR/routing_cost.json"
    cp "$RC_OUT/routing_cost.csv" "$LOGS/routing_cost.csv" 2>/dev/null
  fi
  record_stage --parse routing --routing-json "$RC_OUT/routing_cost.json"
fi

# --- g. tests -----------------------------------------------------------------------------------
if wanted tests && begin_stage tests "${CAPS[6]}"; then
  # Tests that need tensorboardX, which the GPU image lacks (and .gpu does not carry).
  NEED_TBX=(tests/test_api.py::test_tensorboard_log_holds_the_metrics_and_reconstructions)
  deselect=()
  if ! "$PY" -c "import tensorboardX" > /dev/null 2>&1 && [[ $SMOKE != 1 ]]; then
    for t in "${NEED_TBX[@]}"; do deselect+=(--deselect "$t"); done
  fi
  if [[ $SMOKE != 1 ]]; then  # the plugins' flags only where the plugins are there
    TEST_CMD=("$PY" -m pytest -q -p no:cacheprovider -rfE)
    "$PY" -c "import xdist" > /dev/null 2>&1 && TEST_CMD+=(-n 4)
    "$PY" -c "import pytest_timeout" > /dev/null 2>&1 && TEST_CMD+=(--timeout 300)
  fi
  # No preallocation: each xdist worker would otherwise take 75% of the GPU's memory. SIGINT
  # at the time limit, so pytest prints its summary; KILLed 20 s later if still running.
  run_part tests "${CAPS[6]}" --signal 20 env XLA_PYTHON_CLIENT_PREALLOCATE=false \
    "${TEST_CMD[@]}" "${deselect[@]}"
  if (( ${#deselect[@]} )); then
    record_stage --parse tests --meta "deselected_need_tensorboardX=$(json_list "${NEED_TBX[@]}")"
  else
    record_stage --parse tests
  fi
fi

finish
