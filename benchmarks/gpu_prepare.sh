#!/usr/bin/env bash
# Prepares .gpu/ for benchmarks/gpu_suite.sh on a GPU machine without network (run it here).
#
#   bash benchmarks/gpu_prepare.sh [--data-dir DIR] [--also NAME[SPEC]]...
#
# DIR defaults to $TFDS_DATA_DIR. --also carries a package the image has too (e.g. protobuf, if
# the suite's env stage reports the image's version too old for the wheels).
#
# .gpu/wheels/: CPython 3.12 x86-64 wheels of tensorflow-datasets and each of its dependencies
# (transitively) that the GPU image lacks, at this .venv's versions (benchmarks/gpu_wheels.py).
# .gpu/tensorflow_datasets/mnist/: the MNIST TFDS data. Checks that the working tree plus .gpu
# stays under the 64 MiB that travels. Idempotent: wheels already there are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_BYTES=$((64 * 1024 * 1024))
PYTHON=${PYTHON:-.venv/bin/python}
data_dir=${TFDS_DATA_DIR:-}
data_from='$TFDS_DATA_DIR'
also=()
while (($#)); do
  case $1 in
    --data-dir) [[ $# -ge 2 ]] || { echo "gpu_prepare: error: --data-dir needs a value" >&2
                                    exit 2; }
                data_dir=$2; data_from='--data-dir'; shift 2 ;;
    --data-dir=*) data_dir=${1#*=}; data_from='--data-dir'; shift ;;
    --also) [[ $# -ge 2 ]] || { echo "gpu_prepare: error: --also needs a value" >&2; exit 2; }
            also+=(--also "$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_prepare: error: unknown argument '$1' (expected --data-dir DIR, --also NAME)" >&2
       exit 2 ;;
  esac
done

if [[ ! -x $PYTHON ]]; then
  echo "gpu_prepare: error: no $PYTHON; make the venv first (python3 -m venv .venv &&" \
       ".venv/bin/pip install -e '.[test]'), or set PYTHON to an interpreter with capsjax's" \
       "dependencies installed." >&2
  exit 2
fi
if [[ -z $data_dir ]]; then
  echo "gpu_prepare: error: no data dir: pass --data-dir DIR or set \$TFDS_DATA_DIR to a TFDS" \
       "data_dir holding mnist/ (e.g. ../shared/tensorflow_datasets)." >&2
  exit 2
fi
if ! compgen -G "$data_dir/mnist/*/dataset_info.json" >/dev/null; then
  echo "gpu_prepare: error: $data_from '$data_dir' has no mnist/VERSION/dataset_info.json;" \
       "pass --data-dir DIR or set \$TFDS_DATA_DIR to a TFDS data_dir holding mnist/." >&2
  exit 2
fi

mkdir -p .gpu/wheels .gpu/tensorflow_datasets
if ! grep -qxF '/.gpu/' .gitignore 2>/dev/null; then
  echo '/.gpu/' >> .gitignore
  echo "added /.gpu/ to .gitignore"
fi

echo "== wheels (.gpu/wheels)"
"$PYTHON" benchmarks/gpu_wheels.py download --dest .gpu/wheels "${also[@]}"

echo "== MNIST data (.gpu/tensorflow_datasets/mnist)"
if diff -rq "$data_dir/mnist" .gpu/tensorflow_datasets/mnist >/dev/null 2>&1; then
  echo "already there, unchanged: $data_dir/mnist"
else
  rm -rf .gpu/tensorflow_datasets/mnist.partial .gpu/tensorflow_datasets/mnist
  cp -r "$data_dir/mnist" .gpu/tensorflow_datasets/mnist.partial
  mv .gpu/tensorflow_datasets/mnist.partial .gpu/tensorflow_datasets/mnist
  echo "copied $data_dir/mnist"
fi

echo "== size of what travels"
if git check-ignore -q .gpu/wheels; then :; else
  echo "gpu_prepare: error: git does not ignore .gpu/ (check .gitignore)" >&2; exit 1
fi
# Tracked and untracked-not-ignored files, as the device tool sends them, plus .gpu (carried).
tree_bytes=$(git ls-files -z --cached --others --exclude-standard \
             | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
gpu_bytes=$(find .gpu -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + gpu_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
printf '  %-10s %s\n' "tree" "$(mib "$tree_bytes")" ".gpu" "$(mib "$gpu_bytes")" \
  "total" "$(mib "$total") (limit $(mib "$LIMIT_BYTES"))"
find .gpu/wheels -name '*.whl' -printf '%f %s\n' | sort \
  | awk '{printf "    %-80s %7.1f KiB\n", $1, $2 / 1024}'
if ((total >= LIMIT_BYTES)); then
  echo "gpu_prepare: error: the working tree plus .gpu is $(mib "$total"), over the" \
       "$(mib "$LIMIT_BYTES") that travels to the GPU machine; remove large untracked files" \
       "or ignore them." >&2
  exit 1
fi

cat <<'EOF'
== ready. On the GPU machine, run from the repo root (device tool):
  carry:   [".gpu"]
  command: bash benchmarks/gpu_suite.sh          (timeout_s 600)
  (SUITE_SECONDS=540 by default, PAPER_MINUTES=2; results under $OUT: gpu_suite.json,
   logs.tar.gz, routing_cost.json)
EOF
