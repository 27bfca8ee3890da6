#!/usr/bin/env bash
# GPU benchmarks of fst in one command: training throughput against the pytorch/examples
# step (scripts/bench_train.py) and inference latency vs resolution (scripts/bench_infer.py).
#
#   bash scripts/gpu_bench.sh prepare   # once, where fst's .venv is installed and the network is reachable
#   bash scripts/gpu_bench.sh [run]     # on the CUDA machine, ~9 minutes: the headline figures
#   bash scripts/gpu_bench.sh extra     # ~9 minutes more: batch sweep, the other layout, 512 px compiled
#
# `prepare` writes .whl/vgg16_caffe_to_conv4_3.safetensors, the caffe VGG16 tensors the
# loss networks read (30 MB instead of the full 59 MB weights cache), so the CUDA machine
# needs no download: copy .whl/ (git-ignored) there along with the checkout. It also
# downloads the wheels named in EXTRA_WHEELS, for a CUDA machine whose Python lacks some of
# what the benchmarks import (torch, torchvision, pytorch-lightning, safetensors, pyyaml,
# pillow, numpy); they are installed into /tmp/site there, without network access.
# The benchmarks run with $PYTHON (default python3) and the checkout on PYTHONPATH.
# Results go to $OUT (default gpu_bench_out/): train.jsonl / train.log (bench_train),
# infer.json / infer.log (bench_infer), env.txt (GPU, driver, torch).
# Each benchmark runs under its own `timeout` so one slow compile cannot eat the rest.
set -uo pipefail
cd "$(dirname "$0")/.."

WEIGHTS=.whl/vgg16_caffe_to_conv4_3.safetensors
EXTRA_WHEELS=""   # e.g. "hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3"

if [ "${1:-run}" = prepare ]; then
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p .whl
    "$PY" scripts/bench_train.py --write-vgg-subset "$WEIGHTS" || exit 1
    for req in $EXTRA_WHEELS; do
        "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$req" || exit 1
    done
    du -sh .whl
    exit 0
fi

[ -f "$WEIGHTS" ] || { echo "error: $WEIGHTS missing: run 'bash scripts/gpu_bench.sh prepare' and copy .whl/ here" >&2; exit 1; }
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_bench_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"; \
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

train() {  # bench_train with the carried weights; every run appends one JSON line per size
    timeout "$1" "$PY" scripts/bench_train.py --device cuda --vgg-weights "$WEIGHTS" --json "$OUT/train.jsonl" "${@:2}" \
        2>&1 | tee -a "$OUT/train.log"
}
case "${1:-run}" in
run)  # ~9 minutes: the headline figures, inference, a profile, the candidate changes
    train 75 --size 256 --batch 64 --iters 100 --warmup 10                       # trainer defaults: bf16, channels_last, eager
    train 200 --size 256 --batch 64 --iters 100 --warmup 3 --compile             # + torch.compile of net and loss VGG
    train 75 --size 512 --batch 16 --iters 60 --warmup 5
    timeout 300 "$PY" scripts/bench_infer.py --device cuda --no-process --json "$OUT/infer.json" 2>&1 | tee "$OUT/infer.log"
    train 60 --size 256 --batch 64 --iters 30 --warmup 5 --profile --profile-steps 3
    train 60 --size 256 --batch 64 --iters 100 --warmup 10 --experiment gram_nhwc --experiment fused_adam
    ;;
extra)  # ~9 minutes more: batch sweep, layouts, 512 compiled, compile + candidate changes
    train 60 --size 256 --batch 32 --iters 150 --warmup 10
    train 75 --size 256 --batch 128 --iters 60 --warmup 5
    train 60 --size 256 --batch 64 --iters 100 --warmup 10 --no-channels-last
    train 200 --size 512 --batch 16 --iters 60 --warmup 3 --compile
    train 200 --size 256 --batch 64 --iters 100 --warmup 3 --compile --experiment gram_nhwc --experiment fused_adam
    ;;
*) echo "usage: bash scripts/gpu_bench.sh [prepare|run|extra]" >&2; exit 2 ;;
esac
