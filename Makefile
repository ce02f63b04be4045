# The two commands of the README. Both create .venv when absent.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/default
# CPU-only torch wheels (the 'torch' extra); PyPI's default Linux torch pulls GBs of CUDA libraries.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The tested versions (constraints.txt's header says why); CONSTRAINTS= installs the newest in range.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: demo test install notebook

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.installed: setup.py $(CONSTRAINTS) $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIN) -e '.[test]'
	# torch (the 'torch' extra) on its own, so only its lookups consult the CPU-wheel index
	$(BIN)/pip install --quiet --retries 2 --timeout 15 --extra-index-url $(TORCH_INDEX) $(PIN) -e '.[torch]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m ascl_jax.main --config configs/default.py --workdir $(WORKDIR)

# `test`: lint, the suite with the docstring examples (one session), then the core tests again on the
# plain-JAX graph that GPUs/TPUs compile (ASCL_JAX_CPU_FAST=0; the list is tests/core_tests.txt,
# shared with bench/gpu_check.py).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist worksteal -q tests --doctest-modules ascl_jax/losses ascl_jax/attacks ascl_jax/evaluation/runner.py ascl_jax/evaluation/autoattack_driver.py ascl_jax/evaluation/autoattack_api.py
	ASCL_JAX_CPU_FAST=0 $(BIN)/python -m pytest -n 2 --dist worksteal -q @tests/core_tests.txt

# Re-executes the example notebook and saves its outputs (commit the result).
notebook: install
	$(BIN)/python examples/run_notebook.py examples/ascl_losses.ipynb

# The Fashion-MNIST reproduction (issue 15): trains the runs whose results are not yet in
# results/fashion_mnist/ (workdirs in runs/fashion_mnist/, resumable), then writes REPRODUCTION.md.
.PHONY: reproduce
reproduce: install
	$(BIN)/python scripts/reproduce.py --dataset fashion_mnist
