#!/usr/bin/env bash
# The one-command GPU check (`make gpu-check`): on a machine with an NVIDIA GPU, torch with CUDA
# already installed and no network, build fastmtl for that GPU, run every CUDA test (CPU-vs-CUDA
# agreement, sync-debug mode, CUDA-graph capture, determinism) and the GPU benchmark rows, and
# write everything under benchmarks/results/gpu-check-<time>/; then compute-sanitizer (memcheck,
# racecheck, synccheck) over a small set of CUDA tests, each tool under a time limit
# (GPU_CHECK_SANITIZER=0 skips it; skipped when compute-sanitizer is missing), logs in
# sanitizer-<tool>.txt. About 10 minutes on an H100 box: an estimate, not yet timed (build, CUDA
# tests and benchmark rows about 6, compute-sanitizer at most 4 by its time limits).
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

step "compute-sanitizer over a subset of the CUDA tests"
# Not the whole CUDA suite: instrumented kernels run 10-100x slower. The subset is every op's
# CPU-vs-CUDA agreement test plus the CUDA edge cases (empty, large, out-of-range, non-contiguous,
# deterministic backward; not graph capture, which needs the caching allocator that is turned
# off here): each kernel, forward and backward, on a few sizes.
# Bounds: each tool runs under `timeout` (memcheck 144 s, racecheck and synccheck 48 s each, so
# at most 4 minutes; GPU_CHECK_SANITIZER_S=240 is their sum); a tool that runs out of time leaves a
# partial log and says so without failing the check. An error a tool reports fails it.
# PYTORCH_NO_CUDA_MEMORY_CACHING=1: with torch's caching allocator, an access past the end of a
# tensor lands in the same cached block and memcheck cannot see it. racecheck and synccheck
# (shared memory and barriers) check fastmtl's own kernels only (--kernel-name kns=fastmtl).
SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
if [ "${GPU_CHECK_SANITIZER:-1}" = 0 ]; then
  echo "skipped (GPU_CHECK_SANITIZER=0)"
elif [ ! -x "$SANITIZER" ]; then
  echo "skipped: compute-sanitizer not found (set COMPUTE_SANITIZER=/path/to/compute-sanitizer)" \
    | tee "$OUT/sanitizer-skipped.txt"
else
  budget=${GPU_CHECK_SANITIZER_S:-240}
  subset="cpu_and_cuda_agree or cuda_matches_cpu or cuda_edge or cuda_large or out_of_range or deterministic_backward or non_contiguous"
  for spec in "memcheck:$((budget * 3 / 5)):" "racecheck:$((budget / 5)):kns=fastmtl" "synccheck:$((budget / 5)):kns=fastmtl"; do
    IFS=: read -r tool limit kernels <<< "$spec"
    args=(--tool "$tool" --error-exitcode 86 --print-limit 100 --log-file "$OUT/sanitizer-$tool.txt")
    [ -n "$kernels" ] && args+=(--kernel-name "$kernels")
    [ "$tool" = racecheck ] && args+=(--racecheck-report hazard)
    rc=0
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH=$PWD timeout -k 10 "$limit" "$SANITIZER" "${args[@]}" \
      "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ops tests/losses -k "$subset" \
      > "$OUT/sanitizer-$tool-pytest.txt" 2>&1 || rc=$?
    case $rc in
      0) echo "$tool: clean ($(tail -1 "$OUT/sanitizer-$tool-pytest.txt"))" ;;
      124|137) echo "$tool: ran out of its ${limit} s (partial run, not a failure): $OUT/sanitizer-$tool.txt" ;;
      86) echo "$tool: ERRORS reported: $OUT/sanitizer-$tool.txt"; grep -m 20 -E "^=+ +(Invalid|Race|Barrier|Error|.*hazard)" "$OUT/sanitizer-$tool.txt"; status=1 ;;
      *) echo "$tool: pytest failed under the sanitizer (exit $rc): $OUT/sanitizer-$tool-pytest.txt"; tail -5 "$OUT/sanitizer-$tool-pytest.txt"; status=1 ;;
    esac
  done
fi

echo "results in $OUT (status $status)"
exit $status
