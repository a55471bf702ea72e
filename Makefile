# The two Quickstart commands: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test setup-demo setup-dev lint bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the build this project is tested with (pip takes it from a local mirror where one exists).
$(VENV)/.demo: $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

# DeepSpeed builds against the installed torch, hence --no-build-isolation (the ZeRO-3 tests need it).
$(VENV)/.dev: $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-build-isolation "deepspeed>=0.16"
	touch $@ $(VENV)/.demo

setup-demo: $(VENV)/.demo
setup-dev: $(VENV)/.dev

demo: setup-demo
	$(OFFLINE) $(PY) -m hf_autodrop.demo

test: setup-dev
	$(OFFLINE) $(PY) -m pytest -n 2

lint: setup-dev
	$(VENV)/bin/ruff check .

bench: setup-dev
	$(PY) bench/overhead.py
	$(OFFLINE) $(PY) bench/data_pipeline.py
