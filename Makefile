# make test     — what CI runs (.ci/run), three stages, each timed; together they test both ends of the
#                 claimed torch range (2.11 to 2.15, setup.py TESTED_TORCH) and the local 2.13:
#                 stage 1 (make test-cpu): .venv with torch 2.13.0 (CPU build): build + install the
#                   package in place, the torch-free check and the CUDA compile check, the test suite
#                   (the documented install into a fresh venv among it: tests/test_install.py);
#                 stage 2 (make test-wheel): .venv-cu with torch 2.15.0 (a CUDA build, runs on the
#                   CPU): build the CUDA wheel for every release arch, check it (SASS, PTX, NEEDED
#                   libraries, torch pin, size), install it, run the test suite against the installed
#                   wheel (CUDA kernels registered, not run);
#                 stage 3 (make test-device): .venv-211, Python 3.12 with torch 2.11.0 (the GPU
#                   machines' image, a CUDA build): the device wheel (sm_80 + sm_90a) built with nvcc
#                   and checked, then benchmarks/gpu_check.sh --dry-run with that wheel carried: every
#                   step of the GPU check on the CPU, the test suite against the wheel among them
# make wheels   — dist/: the native wheels, one per torch minor with its own venv — CUDA wheels for
#                 torch 2.15 (.venv-cu) and 2.14 (.venv-cu214, vLLM's), the CPU wheel for 2.13 (.venv) —
#                 and the device wheel (torch 2.11, cp312, .venv-211), each checked and its _C imported
#                 by its own torch (scripts/check_wheel.py --import-with)
# make demo     — the reference trainer's default comparison (GRPO vs GRPO+ActFocus on FrozenLake, CPU)
# make study   — the Action Bottleneck study (every arm, 5 seeds, both envs and reasoning modes, the
#                 ablation, C1) into docs/study/; 12.6 min on the idle 2-core dev machine (2 processes)
# make ops-demo — a short CPU tour of the ops (statistics, weights, loss, naive-vs-fused timing)
# make bench    — the CPU benchmark suite and its comparison table, then each policy variant against its
#                 eager form (benchmarks/bench_variants.py)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-installed
SOURCES := $(shell find csrc -type f 2>/dev/null) setup.py
# stages 2 and 3 and make wheels: a venv per torch (scripts/make_venv.sh), its torch from
# requirements-torch<minor>.txt, each taking the triton its torch pins
CU_VENV ?= .venv-cu
CU_PY := $(CU_VENV)/bin/python
DEVICE_VENV ?= .venv-211
DEVICE_PY := $(DEVICE_VENV)/bin/python
CU214_VENV ?= .venv-cu214
CU214_PY := $(CU214_VENV)/bin/python
# the device wheel's Python: the GPU image's 3.12 (python3.12 on PATH, else pyenv's)
PYTHON312 ?= $(shell bash scripts/find_python.sh 3.12)
export MAX_JOBS ?= 2
# verl's own dependencies pin an older transformers/tensordict: install it alone, its imports come from
# requirements-dev.txt
VERL_PIN := verl==0.9.1
# OpenRLHF needs deepspeed and peft to import its package: installed alone, its loss and actor modules are
# loaded from their files by the tests
OPENRLHF_PIN := openrlhf==0.11.2
# DeepSpeed's CPU accelerator runs ZeRO-3 on gloo (tests/test_trl_zero3.py); an sdist that imports torch to
# build (none of its C++ ops is built: DS_BUILD_OPS defaults to 0; the one it needs compiles on first use)
DEEPSPEED_PIN := deepspeed==0.19.8
NO_DEPS_PINS := liger-kernel==0.8.5 $(VERL_PIN) $(OPENRLHF_PIN) $(DEEPSPEED_PIN)

.PHONY: test test-cpu lint test-wheel test-device wheels demo study ops-demo bench install deps cu-deps \
	device-deps cuda-compile clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements-dev.txt
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps --no-build-isolation $(NO_DEPS_PINS)
	touch $@

deps: $(STAMP)

$(CU_VENV)/.deps-installed: requirements-torch2.15.txt requirements-dev.txt
	bash scripts/make_venv.sh $(CU_VENV) $(PYTHON) requirements-torch2.15.txt $(NO_DEPS_PINS)

$(DEVICE_VENV)/.deps-installed: requirements-torch2.11.txt requirements-dev.txt
	bash scripts/make_venv.sh $(DEVICE_VENV) $(PYTHON312) requirements-torch2.11.txt $(NO_DEPS_PINS)

$(CU214_VENV)/.deps-installed: requirements-torch2.14.txt requirements-dev.txt
	bash scripts/make_venv.sh $(CU214_VENV) $(PYTHON) requirements-torch2.14.txt $(NO_DEPS_PINS)

cu-deps: $(CU_VENV)/.deps-installed

device-deps: $(DEVICE_VENV)/.deps-installed

$(VENV)/.built: $(STAMP) $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built

test:
	@bash scripts/timed_stage.sh "stage 1 (torch 2.13.0 CPU build, $(VENV))" $(MAKE) --no-print-directory test-cpu
	@bash scripts/timed_stage.sh "stage 2 (torch 2.15.0 CUDA build, $(CU_VENV), installed CUDA wheel)" \
		$(MAKE) --no-print-directory test-wheel
	@bash scripts/timed_stage.sh "stage 3 (torch 2.11.0 CUDA build, Python 3.12, $(DEVICE_VENV), installed device wheel, GPU check dry run)" \
		$(MAKE) --no-print-directory test-device

test-cpu: install cuda-compile lint
	bash scripts/run_tests.sh $(PY) tests

# ruff (pinned in requirements-dev.txt, configured in pyproject.toml) over the whole tree
lint: deps
	$(PY) -m ruff check .

test-wheel: cu-deps
	PYTHON=$(CU_PY) bash scripts/test_wheel.sh

test-device: device-deps
	PYTHON=$(DEVICE_PY) bash scripts/test_wheel.sh --device

wheels: deps cu-deps device-deps $(CU214_VENV)/.deps-installed
	rm -f dist/actfocus_kernels-*.whl
	PYTHON=$(CU_PY) bash scripts/build_wheels.sh
	PYTHON=$(CU214_PY) bash scripts/build_wheels.sh
	ACTFOCUS_CUDA=0 PYTHON=$(PY) bash scripts/build_wheels.sh
	PYTHON=$(DEVICE_PY) bash scripts/build_wheels.sh --device
	$(CU_PY) scripts/check_wheel.py --import-with $(CU_PY) dist/actfocus_kernels-*torch215*.whl
	$(CU214_PY) scripts/check_wheel.py --import-with $(CU214_PY) dist/actfocus_kernels-*torch214*.whl
	$(PY) scripts/check_wheel.py --import-with $(PY) dist/actfocus_kernels-*torch213*.whl
	$(DEVICE_PY) scripts/check_wheel.py --device --import-with $(DEVICE_PY) dist/actfocus_kernels-*torch211*.whl

demo: install
	$(PY) -m actfocus_trainer compare --env frozenlake

study: install
	$(PY) -m actfocus_trainer study --out docs/study

ops-demo: install
	$(PY) scripts/ops_demo.py

bench: install
	$(PY) -m benchmarks.compare --device cpu
	$(PY) -m benchmarks.bench_variants --device cpu

# the torch-free check always; the CUDA sources compile for sm_80 and sm_90a wherever a CUDA toolkit
# is (nothing runs without a GPU)
cuda-compile: install
	PYTHON=$(PY) bash scripts/compile_cuda.sh

clean:
	rm -rf build dist *.egg-info actfocus_kernels/*.so $(VENV)/.built
