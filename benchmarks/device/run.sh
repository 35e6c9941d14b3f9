#!/usr/bin/env bash
# On the GPU machine, WITHOUT a network: install the wheels prepare.sh fetched into a
# temporary folder (pip install --no-index --no-deps --target), run the whole GPU check in at
# most 8 minutes, and write gpu_check.json, gpu_check.txt (the short table) and
# gpu_check.log into OUT_DIR.
#
#   bash benchmarks/device/run.sh OUT_DIR                 # on a CUDA machine
#   bash benchmarks/device/run.sh --cpu-smoke OUT_DIR     # the same path at toy size, any CPU
#   bash benchmarks/device/run.sh OUT_DIR -- --without ffcv   # extra gpu_check.py arguments
#
# PYTHON (default python3) is the interpreter with torch; WHEELS (default
# benchmarks/device/wheels) the folder of wheels. Without wheels the check runs with what
# PYTHON has, and the sections whose packages are missing say "not run".
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$HERE/wheels}
# gpu_check.py starts no section after BUDGET_S seconds; the longest (compile) is bounded,
# and the hard limit below ends the run inside 8 minutes whatever happens. The JSON is
# rewritten after every section, so what was measured survives the limit.
BUDGET_S=${BUDGET_S:-330}
HARD_LIMIT_S=470

smoke=()
if [ "${1:-}" = "--cpu-smoke" ]; then smoke=(--smoke); shift; fi
if [ $# -lt 1 ] || [ "$1" = "--" ]; then
    echo "usage: run.sh [--cpu-smoke] OUT_DIR [-- gpu_check.py arguments]" >&2
    exit 2
fi
OUT=$1; shift
if [ "${1:-}" = "--" ]; then shift; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

SITE=$(mktemp -d "${TMPDIR:-/tmp}/seltrain-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "${wheels[@]}"
    echo "run.sh: installed ${#wheels[@]} wheel(s) from $WHEELS into $SITE"
else
    echo "run.sh: no wheels in $WHEELS (bash benchmarks/device/prepare.sh fetches them on a" \
         "networked machine); using what $PY has"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# DeepSpeed JIT-builds what it uses into here (the CPU smoke's all-reduce op).
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$SITE/torch_extensions}

set +e
timeout -k 10 "$HARD_LIMIT_S" "$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" \
    --budget-s "$BUDGET_S" "${smoke[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "run.sh: stopped at the ${HARD_LIMIT_S}-s limit; $OUT/gpu_check.json holds the" \
         "sections that finished" | tee -a "$OUT/gpu_check.log"
fi
exit "$rc"
