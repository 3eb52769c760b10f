# Two set-up commands: `make demo` and `make test`. Both create .venv if missing and install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Exact versions seen working together on the 2-core CPU machines (torch and torchvision are pinned as a
# pair: any other combination fails to import). A CUDA machine with its own torch can skip this file:
# `pip install -e .[test]` uses the ranges in pyproject.toml.
CONSTRAINTS ?= constraints/cpu-ci.txt
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.cache/hf
export TORCH_HOME := $(CURDIR)/.cache/torch
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast bench gpu-check gpu-wheels clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"

$(STAMP): $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) torch torchvision
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	# pyiqa's CLIP-based metrics import pkg_resources: keep setuptools below 81.
	$(PIP) install -q -c $(CONSTRAINTS) "setuptools<81"
	# The reference degradation (BasicSR) for the cross-check tests and the degrade benchmark. Without its
	# dependencies: only its pure degradation functions are used, and its pins would move torch.
	$(PIP) install -q --no-deps "basicsr==1.4.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/supirkit demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/ruff check --output-format concise .
	$(PY) -m pytest -q tests --durations=25

# the loop while working: everything not marked slow (about 5 minutes on 2 cores, against 8-9 for all)
test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Every GPU figure in one run (benchmarks/README.md "GPU check"); without CUDA it runs --dry (tiny, CPU) and says so.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out bench_out/gpu_check

# The wheels a GPU machine without our dependencies needs for the check, into .whl/ (sizes printed).
gpu-wheels: $(STAMP)
	$(PY) benchmarks/fetch_gpu_wheels.py

clean:
	rm -rf demo_out bench_out .pytest_cache
