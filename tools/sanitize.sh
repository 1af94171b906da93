#!/usr/bin/env bash
# `make sanitize`: build the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer and run
# the op tests under them. The sanitized build never touches fastmtl/_C*.so: it goes into
# build/sanitize/ (incremental with ninja), beside a copy of the package and of the tests, and
# pytest runs from there, so `import fastmtl` is that copy.
#   tools/sanitize.sh                      tests/ops (and tests/reliability when present)
#   tools/sanitize.sh tests/ops/test_nms.py -k empty      any pytest arguments instead
#   PYTHON=.venv/bin/python tools/sanitize.sh             (default: .venv/bin/python, else python3)
#   SANITIZE_QUICK=1 tools/sanitize.sh                    CI's run: the two slowest tests left out
# Python and torch are not ASan-built, so libasan (and libubsan) are preloaded; leak detection is
# off (Python and torch keep memory alive at exit). UBSan reports are fatal; reports that start in
# torch's own headers are suppressed (tools/ubsan.supp), so what fails is fastmtl's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
case $PY in /*) ;; */*) PY=$ROOT/$PY ;; esac  # the tests run from another folder
CXX_BIN=${CXX:-g++}
BUILD=$ROOT/build/sanitize
STAGE=$BUILD/stage

echo "== sanitized build (ASan + UBSan, CPU kernels) in $BUILD"
start=$(date +%s)
rm -rf "$STAGE"
mkdir -p "$STAGE" "$BUILD/temp"
# The package without any compiled module, then the sanitized one beside it.
cp -r fastmtl "$STAGE/"
find "$STAGE/fastmtl" \( -name '_C*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
FASTMTL_CPU_ONLY=1 FASTMTL_SANITIZE=1 MAX_JOBS=${MAX_JOBS:-2} \
  PATH="$([ -d /usr/lib/ccache ] && echo /usr/lib/ccache:)$PATH" \
  "$PY" setup.py -q build_ext --build-lib "$STAGE" --build-temp "$BUILD/temp" > "$BUILD/build.log" 2>&1 \
  || { tail -40 "$BUILD/build.log"; echo "sanitized build failed: see $BUILD/build.log"; exit 1; }
ls "$STAGE"/fastmtl/_C*.so > /dev/null
echo "built in $(($(date +%s) - start)) s"

# The tests, copied so that pytest's rootdir (put first on sys.path) is the staged package's.
mkdir -p "$STAGE/tests"
cp tests/__init__.py tests/conftest.py tests/utils.py "$STAGE/tests/"
cp -r tests/ops "$STAGE/tests/"
[ -d tests/reliability ] && cp -r tests/reliability "$STAGE/tests/"
cp pyproject.toml "$STAGE/"
find "$STAGE/tests" -name '__pycache__' -prune -exec rm -rf {} +

if [ $# -eq 0 ]; then
  set -- tests/ops
  [ -d "$STAGE/tests/reliability" ] && set -- "$@" tests/reliability
fi
# SANITIZE_QUICK=1 (CI): without the two slowest op tests under ASan (about 1 minute of the run),
# kernels that other tests cover on smaller inputs.
if [ "${SANITIZE_QUICK:-0}" = 1 ]; then
  set -- "$@" --deselect tests/ops/test_nms.py::test_nms_50k_boxes \
    --deselect tests/ops/test_dropin.py::test_roi_align_double_backward
fi

LIBASAN=$("$CXX_BIN" -print-file-name=libasan.so)
LIBUBSAN=$("$CXX_BIN" -print-file-name=libubsan.so)
export LD_PRELOAD="$LIBASAN $LIBUBSAN${LD_PRELOAD:+ $LD_PRELOAD}"
# detect_leaks=0: interpreter and torch allocations live until exit. Allocations above 8 GiB fail
# (torch then raises) instead of being mapped lazily and touched on a shared machine. Torch's own
# code is not instrumented, so container-overflow and odr checks only give false reports across it.
# Reports go to files (pytest captures stderr and loses it when the process aborts; tests that run
# a subprocess keep its output): printed at the end, and any report fails the run.
REPORTS=$BUILD/reports
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export ASAN_OPTIONS="log_path=$REPORTS/asan:detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0:detect_container_overflow=0:alloc_dealloc_mismatch=0:allocator_may_return_null=1:max_allocation_size_mb=8192:handle_segv=1:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="log_path=$REPORTS/ubsan:print_stacktrace=1:halt_on_error=1:suppressions=$ROOT/tools/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export FASTMTL_EXPECT_COMPILED=1 FASTMTL_CPU_ONLY=1
unset FASTMTL_EXPECT_CUDA FORCE_CUDA
export PYTHONDONTWRITEBYTECODE=1

cd "$STAGE"
"$PY" -c "import fastmtl, fastmtl._C, sys; assert fastmtl.__file__.startswith('$STAGE'), fastmtl.__file__; print('fastmtl from', fastmtl.__file__)"
echo "== pytest $* under ASan + UBSan"
start=$(date +%s)
rc=0
"$PY" -m pytest -q -p no:cacheprovider -m "not cuda" "$@" || rc=$?
echo "tests in $(($(date +%s) - start)) s (exit $rc)"
# An allocation refused by allocator_may_return_null (a test asking for petabytes, which torch then
# names) leaves a warning, not an error: a report made only of those is dropped.
for f in "$REPORTS"/*; do
  [ -e "$f" ] && ! grep -qv "WARNING: AddressSanitizer failed to allocate" "$f" && rm -f "$f"
done
if compgen -G "$REPORTS/*" > /dev/null; then
  for f in "$REPORTS"/*; do echo "== sanitizer report $f"; head -60 "$f"; done
  echo "sanitizer reports (above, in $REPORTS): failing"
  rc=1
fi
exit $rc
