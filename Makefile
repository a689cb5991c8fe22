# make test     — what CI runs (.ci/run), both stages, each timed:
#                 stage 1 (make test-cpu): .venv with torch 2.13.0 (CPU build): build + install the
#                   package in place, the torch-free check and the CUDA compile check, the test suite;
#                 stage 2 (make test-wheel): .venv-cu with torch 2.14.1 (a CUDA build, runs on the
#                   CPU): build the CUDA wheel for every release arch, check it (SASS, PTX, NEEDED
#                   libraries, torch pin, size), install it, run the test suite against the installed
#                   wheel (CUDA kernels registered, not run)
# make wheels   — dist/: the CUDA wheel (.venv-cu's torch) and the CPU wheel (.venv's torch), checked
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
# stage 2: a second venv with the newest torch we support, a CUDA build (installs from local files)
CU_VENV ?= .venv-cu
CU_TORCH ?= 2.14.1
CU_PY := $(CU_VENV)/bin/python
CU_STAMP := $(CU_VENV)/.deps-installed
export MAX_JOBS ?= 2
# verl's own dependencies pin an older transformers/tensordict: install it alone, its imports come from
# requirements-dev.txt
VERL_PIN := verl==0.9.1

.PHONY: test test-cpu test-wheel wheels demo study ops-demo bench install deps cu-deps cuda-compile clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements-dev.txt
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps liger-kernel==0.8.5 $(VERL_PIN)
	touch $@

deps: $(STAMP)

$(CU_PY):
	$(PYTHON) -m venv $(CU_VENV)

# the same test tools as stage 1, but triton: torch 2.14 pins its own
$(CU_STAMP): $(CU_PY) requirements-dev.txt
	$(CU_PY) -m pip install -q --upgrade pip
	$(CU_PY) -m pip install -q torch==$(CU_TORCH)
	grep -v '^triton==' requirements-dev.txt > $(CU_VENV)/requirements-dev.txt
	$(CU_PY) -m pip install -q -r $(CU_VENV)/requirements-dev.txt
	$(CU_PY) -m pip install -q --no-deps liger-kernel==0.8.5 $(VERL_PIN)
	touch $@

cu-deps: $(CU_STAMP)

$(VENV)/.built: $(STAMP) $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built

test:
	@start=$$(date +%s); $(MAKE) --no-print-directory test-cpu; rc=$$?; \
	echo "== stage 1 (torch 2.13.0 CPU build, $(VENV)): $$( [ $$rc = 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - start )) s"; \
	exit $$rc
	@start=$$(date +%s); $(MAKE) --no-print-directory test-wheel; rc=$$?; \
	echo "== stage 2 (torch $(CU_TORCH) CUDA build, $(CU_VENV), installed CUDA wheel): $$( [ $$rc = 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - start )) s"; \
	exit $$rc

test-cpu: install cuda-compile
	bash scripts/run_tests.sh $(PY) tests

test-wheel: cu-deps
	PYTHON=$(CU_PY) bash scripts/test_wheel.sh

wheels: deps cu-deps
	rm -f dist/actfocus_kernels-*.whl
	PYTHON=$(CU_PY) bash scripts/build_wheels.sh
	ACTFOCUS_CUDA=0 PYTHON=$(PY) bash scripts/build_wheels.sh
	$(CU_PY) scripts/check_wheel.py dist/actfocus_kernels-*.whl

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
