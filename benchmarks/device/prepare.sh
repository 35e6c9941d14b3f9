#!/usr/bin/env bash
# On a machine WITH a network: fetch what the GPU check needs beyond the GPU machine's own
# Python 3.12 with torch, torchvision, numpy, scipy, tensorboard and matplotlib, as wheels for
# CPython 3.12 on x86-64 Linux, into benchmarks/device/wheels/ (ignored by git; WHEELS=DIR
# puts them elsewhere), and check that they total under 64 MiB. Versions are those of
# requirements.lock. Then carry the checkout with that folder to the GPU machine and run
# benchmarks/device/run.sh there.
#
#   bash benchmarks/device/prepare.sh
#
# What: DeepSpeed and its dependencies (hjson, msgpack, einops, ninja, packaging, psutil,
# py-cpuinfo, pydantic with pydantic-core, annotated-types, typing-inspection and
# typing-extensions), and seltrain's own beyond the list above (PyYAML, tqdm). DeepSpeed is
# published as source only: it is built here into a pure-Python wheel (no compiled ops;
# seltrain's check needs none, DeepSpeed's JIT builds what it uses).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WHEELS=${WHEELS:-$HERE/wheels}
PY=${PYTHON:-python3}
LIMIT_MIB=64

pin() {  # the requirements.lock pin of a package (name compared case- and _/- blind)
    local want
    want=$(echo "$1" | tr 'A-Z_' 'a-z-')
    while IFS= read -r line; do
        case "$line" in \#*|"") continue ;; esac
        if [ "$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')" = "$want" ]; then
            echo "$line"; return 0
        fi
    done < "$REPO/requirements.lock"
    echo "prepare.sh: $1 is not pinned in requirements.lock" >&2
    return 1
}

BINARY=(hjson msgpack einops ninja packaging psutil py-cpuinfo pydantic pydantic_core
        annotated-types typing-inspection typing_extensions PyYAML tqdm)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
specs=()
for name in "${BINARY[@]}"; do specs+=("$(pin "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$WHEELS" "${specs[@]}"
# DeepSpeed: a source distribution only; DS_BUILD_OPS=0 builds no compiled op.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$(pin deepspeed)"

total=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
count=$(ls "$WHEELS"/*.whl | wc -l)
mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "prepare.sh: $count wheels, $mib MiB in $WHEELS"
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "prepare.sh: the wheels total $mib MiB, over the $LIMIT_MIB MiB that may travel to" \
         "the GPU machine; drop what it already has" >&2
    exit 1
fi
