#!/usr/bin/env bash
# The one-command GPU check (`make gpu-check`): on a machine with an NVIDIA GPU, torch with CUDA
# already installed and no network, build fastmtl for that GPU, run every CUDA test (CPU-vs-CUDA
# agreement, sync-debug mode, CUDA-graph capture, determinism) and the GPU benchmark rows, and
# write everything under benchmarks/results/gpu-check-<time>/. About 10 minutes on an H100 box.
#   PYTHON=python3 tools/gpu_check.sh          (default: python3 on PATH)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
status=0

step() { echo "== $1"; }

step "machine"
{ nvidia-smi; git rev-parse --short HEAD; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tail -3

step "build (native arch of the visible GPU)"
export MAX_JOBS=${MAX_JOBS:-$(nproc)} FASTMTL_EXPECT_COMPILED=1 FASTMTL_EXPECT_CUDA=1 FORCE_CUDA=1
unset TORCH_CUDA_ARCH_LIST
if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"; echo "build failed: see $OUT/build.log"; exit 1
fi

step "CUDA tests"
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
PYTHONPATH=$PWD $PY -m pytest -q -p no:cacheprovider $XDIST -m cuda tests \
  --junitxml="$OUT/cuda-tests.xml" 2>&1 | tee "$OUT/cuda-tests.txt" | tail -40 || status=1
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "GPU benchmark rows"
PYTHONPATH=$PWD $PY -m fastmtl bench --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.txt" | tail -60 || status=1

echo "results in $OUT (status $status)"
exit $status
