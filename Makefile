# make test  — create .venv if absent, install what the tests need, build + install the package,
#              compile the CUDA sources (when nvcc exists), run the test suite (what CI runs)
# make demo  — the reference trainer's default comparison (GRPO vs GRPO+ActFocus on FrozenLake, CPU)
# make ops-demo — a short CPU tour of the ops (statistics, weights, loss, naive-vs-fused timing)
# make bench — the CPU benchmark suite and its comparison table
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-installed
SOURCES := $(shell find csrc -type f 2>/dev/null) setup.py

.PHONY: test demo ops-demo bench install deps cuda-compile clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements-dev.txt
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps liger-kernel==0.8.5
	touch $@

deps: $(STAMP)

$(VENV)/.built: $(STAMP) $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built

# The torch-free folders checked; CUDA sources compile for sm_80 and sm_90a wherever a CUDA toolkit
# is (nothing runs without a GPU)
test: install cuda-compile
	$(PY) -m pytest -q tests

demo: install
	$(PY) -m actfocus_trainer compare --env frozenlake

ops-demo: install
	$(PY) scripts/ops_demo.py

bench: install
	$(PY) -m benchmarks.compare --device cpu

cuda-compile: install
	PYTHON=$(PY) bash scripts/compile_cuda.sh

clean:
	rm -rf build *.egg-info actfocus_kernels/*.so $(VENV)/.built
