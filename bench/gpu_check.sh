#!/usr/bin/env bash
# The GPU check, in one call, on a machine with an NVIDIA GPU and no network:
#
#   bash bench/gpu_check.sh OUTDIR        # from a copy of the repository; OUTDIR defaults to $OUT
#
# 1. install  the cp3XX fastnn-cu13 wheel from dist/ (built on the development machine with
#             .ci/build-wheels) with pip --no-deps --no-index --target; only if there is none,
#             build from this tree for the local GPU (slower; the summary says which it was)
# 2. preflight fails loudly (non-zero, reason in summary.txt) unless fastnn imports from that
#             install, CUDA is compiled in, a GPU is seen and runs a kernel, and cuBLASLt loads
# 3. tests    the GPU tests once (tests/test_*cuda*.py, test_device_*.py and test_precision.py's GPU
#             test), with CUDA_DISABLE_PTX_JIT=1: the driver may not JIT the PTX, so what runs is
#             the wheel's machine code for this GPU (sm_90 on an H100); a run where nothing passed,
#             or a GPU test skipped itself for want of a GPU, fails
# 4. bench_*  each GPU benchmark under its own timeout; their goal lines go to the summary
# 5. memcheck compute-sanitizer memcheck over a fast subset of the GPU tests, when the tool is
#             there and works (some machines' drivers refuse it: then SKIPPED, with the reason)
#
# OUTDIR receives exactly two files: summary.txt (each step's status and time, the pytest
# summary, every goal line) and logs.tgz (every step's full log). The step timeouts add up to
# 490 s at most with a wheel (install 60, preflight 60, tests 120, benchmarks 175, memcheck 75),
# 670 s when it builds from source, each step with 5 s more to die after its timeout; typically
# ~2-3 minutes on an H100 with 16 cores. Run the call with a limit >= 540 s (>= 720 s without a
# wheel): one that kills the script first leaves no summary.
#
# Environment: PYTHON (default python3), FASTNN_SITE (install dir, default /tmp/fastnn-site),
# FASTNN_GPU_CHECK_PAST_PREFLIGHT=1 (run every step even after a failed preflight, to test this
# script on a machine without a GPU; the check still ends FAILED).
set -uo pipefail
OUTDIR=${1:-${OUT:-}}
[ -n "$OUTDIR" ] || { echo "usage: bash bench/gpu_check.sh OUTDIR" >&2; exit 2; }
# (resolved before the cd below: a relative OUTDIR is relative to where the script was called)
OUTDIR=$(mkdir -p "$OUTDIR" && cd "$OUTDIR" && pwd) && [ -w "$OUTDIR" ] ||
  { echo "gpu_check.sh: OUTDIR ${1:-${OUT:-}}: cannot create or write it" >&2; exit 2; }
cd "$(dirname "$0")/.."
SRC=$PWD
PY=${PYTHON:-python3}
SITE=${FASTNN_SITE:-/tmp/fastnn-site}
LOGS=$(mktemp -d /tmp/fastnn-gpu-check.XXXXXX)
SUMMARY=$LOGS/summary.txt
export PATH=$PATH:/usr/local/cuda/bin
T_START=$SECONDS
rc=0

note() { echo "$*" | tee -a "$SUMMARY"; }

finish() {  # always: the two files, nothing else, whatever failed
  note "total: $((SECONDS - T_START)) s; exit $rc"
  cp "$SUMMARY" "$OUTDIR/summary.txt"
  tar -czf "$OUTDIR/logs.tgz" -C "$LOGS" . 2>/dev/null || tar -czf "$OUTDIR/logs.tgz" --files-from /dev/null
  rm -rf "$LOGS"
}
trap finish EXIT

# step NAME TIMEOUT_S CMD...: runs CMD under a timeout, full output in NAME.log (and the terminal),
# one status line in the summary. Returns CMD's status (124 = timed out).
step() {
  local name=$1 limit=$2 t0=$SECONDS status word
  shift 2
  echo "=== $name: $*"
  timeout --kill-after=5 "$limit" "$@" > >(tee "$LOGS/$name.log") 2>&1
  status=$?
  wait  # the tee
  case $status in 0) word=ok ;; 124|137) word="TIMEOUT (${limit} s)" ;; *) word="FAILED (exit $status)" ;; esac
  printf '%-16s %-22s %4d s\n' "$name" "$word" $((SECONDS - t0)) >> "$SUMMARY"
  echo "=== $name: $word after $((SECONDS - t0)) s"
  return "$status"
}

note "fastnn GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname)"
{ nvidia-smi; "$PY" --version; "$PY" -c 'import numpy; print("numpy", numpy.__version__)'
  "$PY" -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
  "$PY" -c 'import cupy; print("cupy", cupy.__version__)'; } > "$LOGS/machine.log" 2>&1
gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>&1 | head -n1)
note "GPU (nvidia-smi): ${gpu:-nothing}"
note "$("$PY" --version 2>&1)"
note ""

# ---- 1. install -----------------------------------------------------------------------------
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
wheel=$(ls -t dist/fastnn_cu13-*-"$tag"-"$tag"-*.whl 2>/dev/null | head -n1)
rm -rf "$SITE"
if [ -n "$wheel" ]; then
  note "install: $wheel"
  step install 60 "$PY" -m pip install --no-deps --no-index --target "$SITE" "$wheel" || rc=1
else
  # No wheel: build this tree for the local GPU only (one arch keeps the build to 1-3 min).
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
  note "install: NO $tag fastnn-cu13 wheel in dist/: building from source for sm_${cap:-90}"
  step install 240 "$PY" -m pip install --no-build-isolation --no-deps --target "$SITE" . \
    -Cbuild-dir=/tmp/fastnn-build -Ccmake.define.FASTNN_CUDA=ON \
    "-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=${cap:-90}-real" || rc=1
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}

# ---- 2. preflight ----------------------------------------------------------------------------
cat > "$LOGS/preflight.py" <<'EOF'
import os
import sys

import numpy as np

site = os.path.realpath(sys.argv[1])
try:
    import fastnn
    import fastnn.cuda as cuda
    from fastnn import _C
except Exception as e:  # the wheel did not install or does not import here
    sys.exit(f"PREFLIGHT FAILED: fastnn does not import: {type(e).__name__}: {e}")
fastnn.info()
problems = []
if not os.path.realpath(fastnn.__file__).startswith(site + os.sep):
    problems.append(f"fastnn was imported from {fastnn.__file__}, not from the install in {site}")
if not _C.cuda_compiled:
    problems.append("this fastnn has no CUDA compiled in")
elif not cuda.devices():
    problems.append("no usable GPU: " + (_C.cuda_init_error() or "no device seen"))
else:
    x = np.linspace(-3, 3, 4099, dtype=np.float32)
    try:
        y = fastnn.functional.relu(cuda.to_device(x)).numpy()
        if not np.array_equal(y, np.maximum(x, 0)):
            problems.append("a relu on the GPU returned wrong values")
    except Exception as e:
        problems.append(f"a relu on the GPU failed: {type(e).__name__}: {e}")
    lt = _C.cuda_cublaslt_load_error() if hasattr(_C, "cuda_cublaslt_load_error") else "no load query"
    if lt:
        problems.append(f"cuBLASLt does not load: {lt}")
if problems:
    sys.exit("PREFLIGHT FAILED: " + "; ".join(problems))
print("preflight: GPU usable, cuBLASLt loaded")
EOF
if [ $rc -eq 0 ]; then
  step preflight 60 "$PY" "$LOGS/preflight.py" "$SITE" || rc=1
fi
if [ $rc -ne 0 ]; then
  grep -h "PREFLIGHT FAILED\|ERROR\|Error" "$LOGS/install.log" "$LOGS/preflight.log" 2>/dev/null | tail -n5 | sed 's/^/  /' >> "$SUMMARY"
  note "GPU check FAILED before the tests: see the lines above (logs.tgz: install.log, preflight.log)"
  echo "GPU check FAILED in the preflight" >&2
  [ -n "${FASTNN_GPU_CHECK_PAST_PREFLIGHT:-}" ] || exit 1
fi
grep -E "^(CUDA|cuBLASLt|GPUs)" "$LOGS/preflight.log" | sed 's/^/  /' >> "$SUMMARY"

# ---- 3. the GPU tests, machine code only -----------------------------------------------------
# From a scratch directory so nothing in the tree shadows the install.
# Every test_*cuda*.py, and the real-GPU tests in files named otherwise (the device estimators and
# model, the GPU precision modes): they skip themselves without a GPU, so only this step runs them.
tests="$(ls "$SRC"/tests/test_*cuda*.py "$SRC"/tests/test_device_*.py)"
tests="$tests $SRC/tests/test_precision.py::test_gpu_medium_is_bf16_and_high_is_tf32"
cd "$LOGS"
CUDA_DISABLE_PTX_JIT=1 step tests 120 "$PY" -m pytest -q -ra -p no:cacheprovider --rootdir "$SRC" \
  --junitxml="$LOGS/tests.xml" $tests || rc=1
pyline=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error)|no tests ran" "$LOGS/tests.log" | tail -n1)
note "  pytest: ${pyline:-no summary line}"
if ! echo "$pyline" | grep -qE "[1-9][0-9]* passed"; then
  note "  tests: nothing passed: FAILED"; rc=1
fi
grep -E "^(FAILED|ERROR) " "$LOGS/tests.log" | head -n20 | sed 's/^/  /' >> "$SUMMARY"
# A GPU module that skips itself (no usable GPU as it sees it) is a failure here, not a pass: the
# emulated tests in the same files pass without any GPU.
gpu_skip_reason="no (usable )?CUDA GPU|needs a usable GPU"
gpu_skips=$(grep -E "^SKIPPED" "$LOGS/tests.log" | grep -ciE "$gpu_skip_reason")
if [ "$gpu_skips" -gt 0 ]; then
  note "  tests: $gpu_skips GPU test modules skipped themselves (no usable GPU): FAILED"; rc=1
  grep -E "^SKIPPED" "$LOGS/tests.log" | grep -iE "$gpu_skip_reason" | head -n8 | sed 's/^/    /' >> "$SUMMARY"
fi
skips=$(grep -cE "^SKIPPED" "$LOGS/tests.log")
[ "$skips" -gt 0 ] && note "  $skips skip lines in all (reasons in logs.tgz: tests.log)"

# ---- 4. the GPU benchmarks, each under its own timeout -----------------------------------------
cd "$SRC"
bench() {  # NAME TIMEOUT SCRIPT ARGS...
  local name=$1
  step "$@" || rc=1
  grep -i "goal" "$LOGS/$name.log" | sed "s/^/  $name: /" >> "$SUMMARY"
}
bench bench_act 30 "$PY" bench/activations_cuda.py
bench bench_dropout 20 "$PY" bench/dropout_cuda.py
bench bench_linear 30 "$PY" bench/linear_cuda.py --quick
bench bench_optim 15 "$PY" bench/optim_cuda.py --quick
bench bench_augment 20 "$PY" bench/augment_cuda.py --quick
bench bench_train 60 "$PY" bench/train_cuda.py

# ---- 5. compute-sanitizer memcheck over a fast subset ------------------------------------------
sanitizer=$(command -v compute-sanitizer || true)
if [ -z "$sanitizer" ]; then
  note "memcheck         SKIPPED (compute-sanitizer not found on PATH or in /usr/local/cuda/bin)"
else
  cd "$LOGS"
  # Activations, dropout and the linear layer, small sizes: every kernel family once, ~10-30x
  # slower under memcheck. --error-exitcode makes an access error fail the step.
  step memcheck 75 "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 20 \
      "$PY" -m pytest -q -x -p no:cacheprovider --rootdir "$SRC" "$SRC/tests/test_cuda.py" \
      -k "(test_forward and float32) or test_dropout_matches_cpu or test_linear_shapes"
  ms=$?
  if [ $ms -eq 99 ] || grep -qE "ERROR SUMMARY: [1-9]" "$LOGS/memcheck.log"; then
    note "  memcheck: memory errors found: FAILED"; rc=1
  elif [ $ms -ne 0 ] && grep -qE "ERROR SUMMARY: 0 errors" "$LOGS/memcheck.log"; then
    note "  memcheck: no memory error, but the tests failed under it: FAILED"; rc=1
  elif [ $ms -eq 124 ] || [ $ms -eq 137 ]; then
    note "  memcheck: timed out (slow under the tool): not counted as a failure"
  elif [ $ms -ne 0 ]; then  # the tool itself does not work here (driver, permissions)
    note "  memcheck: SKIPPED, compute-sanitizer does not work on this machine: $(grep -m1 -iE "error|fail" "$LOGS/memcheck.log" | cut -c1-120)"
  fi
  grep -E "ERROR SUMMARY" "$LOGS/memcheck.log" | tail -n1 | sed 's/^/  memcheck: /' >> "$SUMMARY"
fi
note ""
note "GPU check: $([ $rc -eq 0 ] && echo PASSED || echo FAILED)"
exit $rc
