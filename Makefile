# The two Quickstart commands: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: demo test setup-demo setup-dev lint bench wheel-check test-oldest setup-oldest
.PHONY: cards cards-check

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

# The callback reads Trainer internals, so the callback and Trainer tests also run against the oldest
# transformers and accelerate that pyproject.toml allows: its `hf` extra's lower bounds, pinned exactly, in a
# second venv (torch as above). tests/_oldest_versions.py bridges the two test-harness differences of
# transformers 4 (TensorBoard's folder; schedules that came later) and prints the versions it ran.
OLDEST_VENV ?= .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_PINS = $(shell sed -n 's/^hf = \[\(.*\)\]$$/\1/p' pyproject.toml | tr -d ',' | sed 's/>=/==/g')
OLDEST_TESTS := tests/test_callback.py tests/test_callback_logging.py tests/test_reliability.py \
	tests/test_distributed_trainer.py tests/test_demo.py

$(OLDEST_VENV)/.oldest: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install -q "torch==2.14.1"
	$(OLDEST_PY) -m pip install -q -e ".[demo]" $(OLDEST_PINS) "pytest>=8" pytest-timeout tensorboard
	touch $@

setup-oldest: $(OLDEST_VENV)/.oldest

test-oldest: setup-oldest
	$(OFFLINE) $(OLDEST_PY) -m pytest -p no:xdist -p tests._oldest_versions $(OLDEST_TESTS)

# model_cards/<recipe>.md: the card each recipe publishes, rendered from the recipes (cards-check: CI, writes nothing).
cards: setup-dev
	$(PY) recipes/model_cards.py
cards-check: setup-dev
	$(PY) recipes/model_cards.py --check

lint: setup-dev
	$(VENV)/bin/ruff check .

bench: setup-dev
	$(PY) bench/overhead.py
	$(OFFLINE) $(PY) bench/data_pipeline.py

# The library as users get it: build the wheel, install it (not editable) with the demo extra into a
# fresh venv, and run .ci/wheel_smoke.py from a directory outside the checkout.
WHEEL_DIR ?= build/wheel-check
wheel-check:
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)/run
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install -q --upgrade pip
	$(WHEEL_DIR)/venv/bin/python -m pip install -q "torch==2.14.1"
	$(WHEEL_DIR)/venv/bin/python -m pip wheel -q --no-deps -w $(WHEEL_DIR)/dist .
	$(WHEEL_DIR)/venv/bin/python -m pip install -q "$$(ls $(WHEEL_DIR)/dist/hf_autodrop-*.whl)[demo]"
	cp .ci/wheel_smoke.py $(WHEEL_DIR)/run/
	cd $(WHEEL_DIR)/run && $(OFFLINE) ../venv/bin/python wheel_smoke.py
	rm -rf $(WHEEL_DIR)/venv  # 6 GB the next run rebuilds anyway
