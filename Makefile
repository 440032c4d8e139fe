# MedTranslate: `make demo` (set up + run the built-in demo), `make test` (set up + run the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take the CPU build of torch; machines with an NVIDIA driver take a CUDA build.
TORCH_CPU ?= torch==2.13.0
TORCH_CUDA ?= torch>=2.4
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench benchmarks-real install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing $(TORCH_CUDA)"; $(PY) -m pip install -q "$(TORCH_CUDA)"; \
	else \
		echo "No CUDA GPU: installing the CPU build $(TORCH_CPU)"; $(PY) -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/medtranslate demo --output demo_output

test: $(VENV)/.installed-test
	$(PY) -m pytest Testing -n 2 $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest Testing -n 2 -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(VENV)/bin/medtranslate bench --repeats 3 --training --output BENCHMARKS.md

clean:
	rm -rf $(VENV) demo_output .pytest_cache
