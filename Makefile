# vssflow: `make demo` runs the whole system on the embedded corpus; `make test` is what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-all demo bench lint format clean gpu-wheels gpu-check

# DeepSpeed's CPU accelerator only for the CPU targets: a GPU run must not inherit it (the training code sets
# DS_ACCELERATOR per worker from --device; see vssflow/device.py).
test demo bench: export DS_ACCELERATOR := cpu

install:
	bash scripts/install_system.sh
	bash scripts/install_python.sh

test: install
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m pipelines.demo --out runs/demo

bench: install
	$(PY) -m bench.run

# the device check (docs/performance.md, GPU): wheels prepared here, then run on a GPU machine without network
gpu-wheels:
	bash scripts/gpu_wheels.sh wheels/gpu

gpu-check:
	bash scripts/gpu_check.sh --out runs/gpu_check.json

lint: install
	$(VENV)/bin/ruff check vssflow pipelines tests bench
	$(VENV)/bin/ruff format --check vssflow pipelines tests bench

format: install
	$(VENV)/bin/ruff check --fix vssflow pipelines tests bench
	$(VENV)/bin/ruff format vssflow pipelines tests bench

clean:
	rm -rf runs .pytest_cache build *.egg-info
