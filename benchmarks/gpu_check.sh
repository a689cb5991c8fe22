#!/usr/bin/env bash
# GPU check (issue 3 item 6, issue 2 "Done when", issue 29): on a CUDA machine that has nothing but the
# GPU image (python3 3.12, torch 2.11.0+cu130, triton 3.6, nvcc 13.0, pytest), install the carried device
# wheel (or build the extension for the device's arch when none is carried or it does not import), run
# the test suite on the GPU, and print the benchmark tables (ours vs naive torch vs torch.compile vs
# peers) and the TRL step, all within DEADLINE_S seconds (default 470: under 8 minutes).
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # here, on the CPU: every step, at tiny sizes (CI stage 3)
#
# Carry recipe (here, in the repository root; .whl/ is git-ignored, name it in the device run's carry):
#   make wheels      # or just the device wheel: PYTHON=.venv-211/bin/python bash scripts/build_wheels.sh --device
#   mkdir -p .whl && cp dist/actfocus_kernels-*torch211*.whl .whl/     # cp312, sm_80 + sm_90a, < 1 MiB
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1 trl==1.16.0 verl==0.9.1 \
#     datasets==5.2.0 tensordict==0.15.3 omegaconf==2.4.0 codetiming==1.4.0
#   then the device run:  carry [".whl"], command "bash benchmarks/gpu_check.sh" (its files come back in $OUT)
# The peers are what the image lacks (trl needs datasets; verl's loss module tensordict, omegaconf and
# codetiming); all of .whl/*.whl is installed with --no-index --no-deps into /tmp/site (PYTHONPATH), one
# version of each. With a device wheel there, the tests and benchmarks run from a copy of tests/ and
# benchmarks/ outside the source tree, so that `import actfocus_kernels` is the wheel; without one (or
# when its _C fails to import under this torch) the extension is compiled in place, for the device's
# arch only (the fallback: minutes of the lease).
#
# --dry-run runs the same steps on the CPU, so that a lease is never lost to a script error: the carried
# wheels installed into a temporary folder, the test selection under TRITON_INTERPRET=1 (the suite's
# CPU shapes; the benchmark smoke test too), every benchmark entry point with --device cpu at tiny sizes, the vocab-parallel check on
# gloo, the TRL step; without a carried device wheel it compiles the CPU extension in place. Logs, the
# results JSON/Markdown and the plots go to benchmarks/out/gpu/ and, when $OUT is set, are copied there
# (at most 8 files). Environment: PYTHON (default python3), DEADLINE_S, MAX_JOBS (default 16),
# TORCH_CUDA_ARCH_LIST (default: the device's, e.g. 9.0a on H100/H200), PYTEST_ARGS (the test selection,
# default the suite but for the install test, and on the GPU the CPU-only benchmark smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
START=$(date +%s)
PY=${PYTHON:-python3}
RESULTS=$ROOT/benchmarks/out/gpu
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
export PYTHONUNBUFFERED=1
if [ "$DRY_RUN" = 1 ]; then
    # the CPU runs the same steps at tiny sizes; the test selection is the CPU suite (~14 min on 2 cores in CI)
    DEADLINE_S=${DEADLINE_S:-2100}
    DEVICE=cpu
    SITE=$(mktemp -d)
    export TRITON_INTERPRET=1
    TEST_CAP_S=1800
    read -r -a SELECTION <<<"${PYTEST_ARGS:---ignore=tests/test_install.py tests}"
    COMPARE=(--device cpu --sizes smoke --no-compile)
    VARIANTS=(--device cpu --tokens 64 --vocab 512 --seq-len 16 --repeats 2)
    TRANSFORMS=(--device cpu --rows 8 --vocab 512 --rounds 2)
    TRL=(--device cpu --batch 2 --prompt 8 --completion 16 --hidden 32 --layers 1 --vocab 256 --repeats 2)
    OPENRLHF=(--device cpu --vocab 256 --hidden 32 --layers 1 --batch 2 --prompt 8 --response 16 --repeats 2)
    NCCL=(--dist-backend gloo --ranks 2 --tokens 16 --vocab 256)
    SIZES_NAME=smoke
else
    DEADLINE_S=${DEADLINE_S:-470}
    DEVICE=cuda
    SITE=/tmp/site
    TEST_CAP_S=180
    # the CPU-only benchmark smoke test and the install test (a fresh venv, a C++ build) are left out
    read -r -a SELECTION <<<"${PYTEST_ARGS:---ignore=tests/test_benchmarks.py --ignore=tests/test_install.py tests}"
    COMPARE=(--device cuda --sizes gpu)
    VARIANTS=(--device cuda --tokens 8192 --vocab 151936)
    TRANSFORMS=(--device cuda --rows 4096 --vocab 151936 --rounds 10)
    TRL=(--device cuda --batch 16 --completion 512 --hidden 1024 --vocab 151936)
    OPENRLHF=(--device cuda --vocab 151936 --hidden 1024 --batch 8 --response 1024)
    NCCL=(--dist-backend nccl)
    SIZES_NAME=gpu
fi

elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( DEADLINE_S - $(elapsed) )); }
say() { echo "=== [$(elapsed)s] $*"; }

# the package from the carried device wheel: usable when its _C imports and registers this device's kernels
wheel_ok() {
    (cd "$WORK" && $PY -c "import sys, actfocus_kernels as ak; from actfocus_kernels import native; \
info = native.build_info(); print('actfocus_kernels', ak.__version__, 'from', ak.__file__, info); \
sys.exit(not ak.__file__.startswith('$SITE') or '$DEVICE' not in info['backends'] or 'cuda' not in info['backends'])")
}

build_from_source() {
    if [ "$DRY_RUN" = 1 ]; then
        export ACTFOCUS_CUDA=0  # no device arch to build for: the CPU extension, the same command
    else
        DEVICE_ARCH=$($PY -c "import torch; major, minor = torch.cuda.get_device_capability(0); \
print(f'{major}.{minor}' + ('a' if (major, minor) == (9, 0) else ''))")
        export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$DEVICE_ARCH}
    fi
    export MAX_JOBS=${MAX_JOBS:-16}
    say "building the extension: TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} ACTFOCUS_CUDA=${ACTFOCUS_CUDA:-1} MAX_JOBS=$MAX_JOBS (log: $RESULTS/build.log)"
    if ! timeout 270 $PY -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$RESULTS/build.log" 2>&1; then
        BUILD=FAILED
        say "BUILD FAILED (last lines of build.log below); continuing with the pure-Python package (triton backend)"
        tail -40 "$RESULTS/build.log"
        ACTFOCUS_NATIVE=0 timeout 60 $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . \
            || say "even the pure-Python install failed"
    fi
    grep -E "^(ninja: |\[[0-9]+/[0-9]+\])" "$RESULTS/build.log" | tail -3
    $PY -c "import actfocus_kernels; from actfocus_kernels import native; print('actfocus_kernels', \
actfocus_kernels.__version__, native.build_info())"
}

# run_step LOG MAX_S FILTER COMMAND...: COMMAND into $RESULTS/LOG within the time left less 10 s (at most
# MAX_S when not 0), the log through FILTER (a command line reading it) shown, its last 20 lines too when
# it failed; STEP_RESULT: done or FAILED (rc N)
run_step() {
    local log=$RESULTS/$1 limit=$(( $(remaining) - 10 )) filter=$3 rc
    [ "$2" -gt 0 ] && [ "$2" -lt "$limit" ] && limit=$2
    shift 3
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    eval "$filter" <"$log"
    if [ "$rc" = 0 ]; then STEP_RESULT=done; else STEP_RESULT="FAILED (rc $rc)"; tail -20 "$log"; fi
}

check() {
say "device ($([ "$DRY_RUN" = 1 ] && echo "dry run on the CPU" || echo GPU))"
if [ "$DRY_RUN" = 1 ]; then
    $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| triton', triton.__version__, '| CPU')" || { say "torch or triton missing"; exit 1; }
else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
    nvcc --version | tail -2 || true
    $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0), \
torch.cuda.get_device_capability(0))" || { say "torch cannot see a CUDA device"; exit 1; }
fi

WORK=$ROOT  # where the tests and benchmarks run from
BUILD=ok
if compgen -G ".whl/*.whl" >/dev/null; then
    say "installing the carried wheels into $SITE: $(ls .whl | tr '\n' ' ')"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
if compgen -G "$SITE/actfocus_kernels/_C*.so" >/dev/null; then
    WORK=$(mktemp -d)
    cp -r tests benchmarks pyproject.toml README.md "$WORK"/
    rm -rf "$WORK/benchmarks/out"
    say "the carried device wheel, from $WORK (a copy of tests/ and benchmarks/)"
    if wheel_ok; then
        BUILD="ok (device wheel)"
        export ACTFOCUS_EXPECT_WHEEL=cuda  # tests/test_build.py: the suite runs against it, CUDA kernels registered
    else
        say "the device wheel does not serve this machine (above): compiling instead"
        rm -rf "$SITE"/actfocus_kernels* "$WORK"
        WORK=$ROOT
        build_from_source
    fi
else
    say "no device wheel carried (.whl/actfocus_kernels-*.whl): compiling"
    build_from_source
fi
say "build $BUILD"
cd "$WORK" || exit 1

# the benchmarks keep at least 150 s; the tests get up to TEST_CAP_S of the rest
TEST_S=$(( $(remaining) - 150 ))
[ "$TEST_S" -gt "$TEST_CAP_S" ] && TEST_S=$TEST_CAP_S
PARALLEL=""
[ "$DRY_RUN" = 0 ] && $PY -c "import xdist" 2>/dev/null && PARALLEL="-n 8"
TESTS=skipped
if [ "$TEST_S" -ge 30 ]; then
    say "tests on the $DEVICE (timeout ${TEST_S}s, ${PARALLEL:-no xdist}): ${SELECTION[*]}"
    timeout "$TEST_S" $PY -m pytest -q -x -p no:cacheprovider $PARALLEL "${SELECTION[@]}" >"$RESULTS/pytest.log" 2>&1
    TEST_RC=$?
    tail -25 "$RESULTS/pytest.log"
    case $TEST_RC in 0) TESTS=passed ;; 124) TESTS="timed out after ${TEST_S}s" ;; *) TESTS="FAILED (rc $TEST_RC)" ;; esac
else
    say "no time left for the tests"
fi
say "tests $TESTS"

TP_RESULT=skipped
if [ "$(remaining)" -ge 120 ]; then  # issue 14: the vocab-parallel path on NCCL, one rank per GPU
    say "vocab-parallel statistics and loss on a ${NCCL[1]} group (benchmarks/tp_nccl_check.py)"
    run_step tp.log 90 "tail -8" $PY -m benchmarks.tp_nccl_check "${NCCL[@]}"
    TP_RESULT=$STEP_RESULT
fi

BENCH_S=$(( $(remaining) - 120 ))  # 120 s kept for the variants and transforms tables and the trainer steps
BENCH=skipped
if [ "$BENCH_S" -ge 60 ]; then
    say "benchmarks: python -m benchmarks.compare ${COMPARE[*]} (budget $((BENCH_S - 45))s)"
    timeout "$BENCH_S" $PY -m benchmarks.compare "${COMPARE[@]}" --budget-s $((BENCH_S - 45)) \
        --out "$RESULTS" >"$RESULTS/compare.log" 2>&1
    BENCH_RC=$?
    grep -E "^\[" "$RESULTS/compare.log" | cut -c1-160
    case $BENCH_RC in 0) BENCH=done ;; 124) BENCH="timed out (partial JSON kept)" ;; *) BENCH="FAILED (rc $BENCH_RC)" ;; esac
    [ "$BENCH_RC" -ne 0 ] && tail -30 "$RESULTS/compare.log"
    [ -f "$RESULTS/results_${DEVICE}_${SIZES_NAME}.md" ] && cat "$RESULTS/results_${DEVICE}_${SIZES_NAME}.md"
else
    say "no time left for the benchmarks"
fi

VARIANTS_RESULT=skipped
if [ "$(remaining)" -ge 40 ]; then
    say "policy variants against their eager form (benchmarks/bench_variants.py ${VARIANTS[*]})"
    run_step variants.log 0 "tail -16" $PY -m benchmarks.bench_variants "${VARIANTS[@]}"
    VARIANTS_RESULT=$STEP_RESULT
fi

TRANSFORMS_RESULT=skipped
if [ "$(remaining)" -ge 40 ]; then
    say "logit transforms and extra statistics against the plain pass (benchmarks/bench_transforms.py ${TRANSFORMS[*]})"
    run_step transforms.log 0 "cat" $PY -m benchmarks.bench_transforms "${TRANSFORMS[@]}"
    TRANSFORMS_RESULT=$STEP_RESULT
fi

TRL_RESULT=skipped
if ! $PY -c "import trl" 2>/dev/null; then
    say "TRL step (benchmarks/bench_trl_step.py): skipped, trl is not installed (carry its wheel, header)"
elif [ "$(remaining)" -ge 60 ]; then
    say "TRL GRPO step without generation, stock vs ActFocusGRPOTrainer (benchmarks/bench_trl_step.py ${TRL[*]})"
    run_step trl.log 0 'grep -E "^\||^TRL"' $PY -m benchmarks.bench_trl_step "${TRL[@]}"
    TRL_RESULT=$STEP_RESULT
fi

OPENRLHF_RESULT=skipped
# its package imports deepspeed and peft: only whether it is installed (the benchmark loads its files)
if ! $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('openrlhf') is None)" 2>/dev/null; then
    say "OpenRLHF actor forward + loss (benchmarks/bench_openrlhf.py): skipped, openrlhf is not installed"
elif [ "$(remaining)" -ge 60 ]; then
    say "OpenRLHF actor forward + loss, stock vs ours (benchmarks/bench_openrlhf.py ${OPENRLHF[*]})"
    run_step openrlhf.log 0 'grep -E "^\||^OpenRLHF"' $PY -m benchmarks.bench_openrlhf "${OPENRLHF[@]}"
    OPENRLHF_RESULT=$STEP_RESULT
fi

say "summary: build $BUILD | tests $TESTS | vocab-parallel $TP_RESULT | benchmarks $BENCH | variants $VARIANTS_RESULT | transforms $TRANSFORMS_RESULT | TRL $TRL_RESULT | OpenRLHF $OPENRLHF_RESULT | $(elapsed)s of ${DEADLINE_S}s"
# a dry run must have run every step; on the GPU, the tests and the benchmarks must have
[[ "$BUILD" = ok* ]] && [ "$TESTS" = passed ] && [ "$BENCH" = done ] && [[ "$VARIANTS_RESULT" != FAILED* ]] \
    && [[ "$TRANSFORMS_RESULT" != FAILED* ]] && [[ "$TRL_RESULT" != FAILED* ]] && [[ "$TP_RESULT" != FAILED* ]] && [[ "$OPENRLHF_RESULT" != FAILED* ]] \
    && { [ "$DRY_RUN" = 0 ] || { [ "$TRL_RESULT" = done ] && [ "$VARIANTS_RESULT" = done ] && [ "$TRANSFORMS_RESULT" = done ] && [ "$TP_RESULT" = done ]; }; }
}

check 2>&1 | tee "$LOG"
STATUS=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then  # at most 8 files come back from the device machine
    for name in gpu_check.log build.log pytest.log compare.log "results_${DEVICE}_${SIZES_NAME}.json" \
                "results_${DEVICE}_${SIZES_NAME}.md" "policy_loss_${DEVICE}_${SIZES_NAME}.png" trl.log; do
        [ -f "$RESULTS/$name" ] && cp "$RESULTS/$name" "$OUT"/
    done
fi
[ "$DRY_RUN" = 1 ] && rm -rf "$SITE"
exit "$STATUS"
