#!/usr/bin/env bash
# The whole GPU check of the performance issue in one call of at most 9.5 minutes, at the paper's sizes: forward
# passes (plain vs fast convolution forms), training steps of VGG11-3D on 192x256x256 crops and ConvNeXt-T on
# 512x512 slices, heat maps with patch 64 / stride 16 on 512x512 (vmapped vs sequential), the cascade on a
# full-size phantom, the loader, and both paper presets at their own batches (time per training step and per
# prediction, peak memory of each). Each benchmark's JSON (and its log) goes to $OUT (default benchmarks/out); a
# benchmark that fails or overruns its share leaves a JSON saying so and the others still run.
#
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# Packages the machine lacks travel as wheels in .whl/ (installed here into /tmp/site). For the project's borrowed
# GPUs (JAX, flax, optax, orbax in the image) these are SimpleITK, pingouin, pandas-flavor and tensorboardX, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#       simpleitk pingouin pandas-flavor tensorboardX
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

"$PYTHON" -c 'import jax; print(jax.devices())' > "$OUT/devices.txt" 2>&1

bench() {  # bench NAME SECONDS ARGS...: one benchmark with its own time limit
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$PYTHON" "benchmarks/${name%%-*}.py" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; then
    echo "$name: $((SECONDS - start)) s"
  else
    echo "{\"benchmark\": \"$name\", \"failed\": true, \"exit_code\": $?, \"limit_s\": $limit}" > "$OUT/$name.json"
    echo "$name: FAILED after $((SECONDS - start)) s (see $OUT/$name.log)"
  fi
}

bench forward 50
bench train-lnet 110 --net lnet --preset paper --lnet-batch 2 --steps 10
bench train-snet 90 --net snet --preset paper --snet-batch 10 --steps 20
bench train-snet-bf16 50 --net snet --preset paper --snet-batch 10 --steps 20 --compute-dtype bfloat16
bench explain 60 --image-size 512 --patch 64 --stride 16 --chunk 64
bench cascade 80 --preset paper --phantom full --scans 2
bench loader 40 --image-size 512 --batch 10 --steps 4
bench paper_sizes 90 --steps 3 --predictions 2
cat "$OUT"/*.json
