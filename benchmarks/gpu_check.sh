#!/usr/bin/env bash
# GPU check (issue 3 item 6, issue 2 "Done when"): on a CUDA machine that has nothing but torch and
# triton, build the extension for the device's arch, run the test suite on the GPU, and print the
# benchmark tables (ours vs naive torch vs torch.compile vs peers), all within DEADLINE_S seconds
# (default 470: under 8 minutes).
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Peers are measured when importable: wheels in .whl/ (e.g. liger-kernel, cut-cross-entropy,
# fetched elsewhere with `pip download --no-deps`) are installed with --no-index --no-deps first.
# Logs, the results JSON/Markdown and the plots go to benchmarks/out/gpu/ and, when $OUT is set,
# are copied there (at most 8 files). Environment: PYTHON (default python3), DEADLINE_S, MAX_JOBS
# (default 16), TORCH_CUDA_ARCH_LIST (default: the device's, e.g. 9.0a on H100/H200).
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-470}
PY=${PYTHON:-python3}
RESULTS=benchmarks/out/gpu
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( DEADLINE_S - $(elapsed) )); }
say() { echo "=== [$(elapsed)s] $*"; }

check() {
say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
nvcc --version | tail -2 || true
$PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0), \
torch.cuda.get_device_capability(0))" || { say "torch cannot see a CUDA device"; exit 1; }

if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the carried wheels: $(ls .whl)"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

DEVICE_ARCH=$($PY -c "import torch; major, minor = torch.cuda.get_device_capability(0); \
print(f'{major}.{minor}' + ('a' if (major, minor) == (9, 0) else ''))")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$DEVICE_ARCH}
export MAX_JOBS=${MAX_JOBS:-16}
say "building the extension: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS (log: $RESULTS/build.log)"
BUILD=ok
if ! timeout 270 $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$RESULTS/build.log" 2>&1; then
    BUILD=FAILED
    say "CUDA BUILD FAILED (last lines of build.log below); continuing with the pure-Python package (triton backend)"
    tail -40 "$RESULTS/build.log"
    ACTFOCUS_NATIVE=0 timeout 60 $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . \
        || say "even the pure-Python install failed"
fi
grep -E "^(ninja: |\[[0-9]+/[0-9]+\])" "$RESULTS/build.log" | tail -3
say "build $BUILD"
$PY -c "import actfocus_kernels; from actfocus_kernels import native; print('actfocus_kernels', \
actfocus_kernels.__version__, native.build_info())"

# the benchmarks keep at least 150 s; the tests get up to 180 s of the rest
TEST_S=$(( $(remaining) - 150 ))
[ "$TEST_S" -gt 180 ] && TEST_S=180
PARALLEL=""
$PY -c "import xdist" 2>/dev/null && PARALLEL="-n 8"
TESTS=skipped
if [ "$TEST_S" -ge 30 ]; then
    say "tests on the GPU (timeout ${TEST_S}s, ${PARALLEL:-no xdist}; the CPU-only benchmark smoke test is left out)"
    timeout "$TEST_S" $PY -m pytest -q -x -p no:cacheprovider $PARALLEL --ignore=tests/test_benchmarks.py tests \
        >"$RESULTS/pytest.log" 2>&1
    TEST_RC=$?
    tail -25 "$RESULTS/pytest.log"
    case $TEST_RC in 0) TESTS=passed ;; 124) TESTS="timed out after ${TEST_S}s" ;; *) TESTS="FAILED (rc $TEST_RC)" ;; esac
else
    say "no time left for the tests"
fi
say "tests $TESTS"

if [ "$(remaining)" -ge 120 ]; then  # issue 14: the vocab-parallel path on NCCL, one rank per GPU
    say "vocab-parallel statistics and loss on an NCCL group (benchmarks/tp_nccl_check.py)"
    timeout 90 $PY -m benchmarks.tp_nccl_check --dist-backend nccl 2>&1 | tail -8
fi

BENCH_S=$(( $(remaining) - 75 ))  # 60 s of it for the variants table below
BENCH=skipped
if [ "$BENCH_S" -ge 60 ]; then
    say "benchmarks: python -m benchmarks.compare --device cuda --sizes gpu (budget $((BENCH_S - 45))s)"
    timeout "$BENCH_S" $PY -m benchmarks.compare --device cuda --sizes gpu --budget-s $((BENCH_S - 45)) \
        --out "$RESULTS" >"$RESULTS/compare.log" 2>&1
    BENCH_RC=$?
    grep -E "^\[" "$RESULTS/compare.log" | cut -c1-160
    case $BENCH_RC in 0) BENCH=done ;; 124) BENCH="timed out (partial JSON kept)" ;; *) BENCH="FAILED (rc $BENCH_RC)" ;; esac
    [ "$BENCH_RC" -ne 0 ] && tail -30 "$RESULTS/compare.log"
    [ -f "$RESULTS/results_cuda_gpu.md" ] && cat "$RESULTS/results_cuda_gpu.md"
else
    say "no time left for the benchmarks"
fi

if [ "$(remaining)" -ge 40 ]; then
    say "policy variants against their eager form (benchmarks/bench_variants.py)"
    timeout $(( $(remaining) - 10 )) $PY -m benchmarks.bench_variants --device cuda --tokens 8192 --vocab 151936 \
        2>&1 | tail -16
fi

if ! $PY -c "import trl" 2>/dev/null; then
    say "TRL step (benchmarks/bench_trl_step.py): skipped, trl is not installed (pip install actfocus_kernels[trl])"
elif [ "$(remaining)" -ge 60 ]; then
    say "TRL GRPO step without generation, stock vs ActFocusGRPOTrainer (benchmarks/bench_trl_step.py)"
    timeout $(( $(remaining) - 10 )) $PY -m benchmarks.bench_trl_step --device cuda --batch 16 --completion 512 \
        --hidden 1024 --vocab 151936 2>&1 | grep -E "^\||^TRL"
fi

say "summary: build $BUILD | tests $TESTS | benchmarks $BENCH | $(elapsed)s of ${DEADLINE_S}s"
[ "$BUILD" = ok ] && [ "$TESTS" = passed ] && [ "$BENCH" = done ]
}

check 2>&1 | tee "$LOG"
STATUS=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then  # at most 8 files come back from the device machine
    for name in gpu_check.log build.log pytest.log compare.log results_cuda_gpu.json results_cuda_gpu.md \
                policy_loss_cuda_gpu.png token_stats_cuda_gpu.png; do
        [ -f "$RESULTS/$name" ] && cp "$RESULTS/$name" "$OUT"/
    done
fi
exit "$STATUS"
