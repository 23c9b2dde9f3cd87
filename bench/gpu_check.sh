#!/usr/bin/env bash
# The GPU check, in one script (run from the repository root on a machine with an NVIDIA GPU;
# no network needed): build fastnn with CUDA into /tmp/site, print what it sees, run the CUDA
# tests, run the GPU activation, dropout, linear, optimizer and augmentation benchmarks. About 2-3
# minutes on an H100 machine with 16 cores; the step timeouts bound it to ~7.5 minutes (run it with
# timeout_s >= 480).
#
#   bash bench/gpu_check.sh          # logs in $OUT if set, else /tmp/fastnn-gpu-check
#
# Needs: python3 with numpy, pybind11, scikit-build-core, pytest (torch and CuPy optional: their
# interop tests and the PyTorch column of the benchmark are skipped without them), cmake, and
# nvcc (PATH, or /usr/local/cuda/bin). FASTNN_CUDA_ARCH overrides the GPU architecture (default:
# the first GPU's compute capability per nvidia-smi, e.g. 90-real on an H100).
set -uo pipefail
cd "$(dirname "$0")/.."

LOG=${OUT:-/tmp/fastnn-gpu-check}
SITE=/tmp/site
mkdir -p "$LOG"
export PATH=/usr/local/cuda/bin:$PATH
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}

if [ -z "${FASTNN_CUDA_ARCH:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
  FASTNN_CUDA_ARCH=${cap:+${cap}-real}
  FASTNN_CUDA_ARCH=${FASTNN_CUDA_ARCH:-90-real}
fi

# step NAME CMD...: runs CMD, output to the terminal and $LOG/NAME.log; returns CMD's status.
step() {
  local name=$1 t0=$SECONDS status
  shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$LOG/$name.log"
  status=${PIPESTATUS[0]}
  echo "=== $name: exit $status after $((SECONDS - t0)) s"
  return "$status"
}

{ nvidia-smi || true; nvcc --version || true; python3 --version; } > "$LOG/machine.log" 2>&1
echo "GPU arch: $FASTNN_CUDA_ARCH; logs: $LOG"

step build timeout 180 python3 -m pip install --no-build-isolation --no-deps --upgrade -v . --target "$SITE" \
  -Cbuild-dir=/tmp/fastnn-build -Ccmake.define.FASTNN_CUDA=ON \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$FASTNN_CUDA_ARCH" || { echo "BUILD FAILED"; exit 1; }
grep -iE "warning" "$LOG/build.log" | grep -v "^ *$" > "$LOG/build-warnings.log" || true

export PYTHONPATH=$SITE
rc=0
step info python3 -c "import fastnn; fastnn.info()" || rc=1
step tests timeout 130 python3 -m pytest -q -ra -p no:cacheprovider tests/test_cuda.py tests/test_cuda_nogpu.py \
  tests/test_preprocessing_cuda.py tests/test_optim_cuda.py tests/test_losses_cuda.py tests/test_augment_cuda.py \
  --junitxml="$LOG/tests.xml" || rc=1
step bench timeout 35 python3 bench/activations_cuda.py || rc=1
step bench_dropout timeout 25 python3 bench/dropout_cuda.py || rc=1
step bench_linear timeout 30 python3 bench/linear_cuda.py --quick || rc=1
step bench_optim timeout 15 python3 bench/optim_cuda.py --quick || rc=1
step bench_augment timeout 20 python3 bench/augment_cuda.py --quick || rc=1
echo "gpu_check: exit $rc (logs in $LOG)"
exit $rc
