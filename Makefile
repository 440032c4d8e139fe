# MedTranslate: `make demo` (set up + run the built-in demo), `make test` (set up + run the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take the CPU build of torch (from PyTorch's CPU index when it answers: PyPI's Linux torch is the CUDA
# build, GBs of it; else from the configured index); machines with an NVIDIA driver take a CUDA build.
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_CUDA ?= torch>=2.4
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench benchmarks-real install install-test clean gpu-wheels gpu-models

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing $(TORCH_CUDA)"; $(PY) -m pip install -q "$(TORCH_CUDA)"; \
	elif $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5)" >/dev/null 2>&1; then \
		echo "No CUDA GPU: installing the CPU build $(TORCH_CPU) from $(TORCH_CPU_INDEX)"; \
		$(PY) -m pip install -q --extra-index-url "$(TORCH_CPU_INDEX)" "$(TORCH_CPU)"; \
	else \
		echo "No CUDA GPU: installing $(TORCH_CPU) from the configured package index ($(TORCH_CPU_INDEX) does not answer)"; \
		$(PY) -m pip install -q "$(TORCH_CPU)"; \
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

# The GPU check (Testing/gpu/run_checks.sh) runs on a machine that has torch with CUDA but no package index: these
# targets put what it lacks into ignored folders that travel with the tree. SimpleITK's 53 MB wheel goes as a 28 MB
# xz archive, which keeps the carried tree under 64 MiB.
GPU_WHEELS ?= monai==1.6.1 SimpleITK==2.5.7 pydicom==3.0.2 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
	referencing==0.37.0 rpds-py==2026.9.1 platformdirs==4.14.9
GPU_PYTHON ?= 3.12
GPU_MODELS ?=
# the phantom case the GPU check trains the diffusion config on (the config's training and held-out slabs)
GPU_DATA ?= ../shared/data/Task1/phantom/1PA001

gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	set -e; for w in .whl/simpleitk-*.whl; do [ -e "$$w" ] || continue; rm -rf .whl/sitk; mkdir .whl/sitk; \
		$(PYTHON) -m zipfile -e "$$w" .whl/sitk; tar -C .whl/sitk -cf - . | xz -9 -T0 > .whl/simpleitk.tar.xz; \
		rm -rf .whl/sitk "$$w"; done
	du -sh .whl

gpu-models:
	rm -rf .gpu; mkdir -p .gpu/models .gpu/data/Task1/phantom
	for m in $(GPU_MODELS); do cp -r "$$m" .gpu/models/; done
	for case in $(GPU_DATA); do cp -r "$$case" .gpu/data/Task1/phantom/; done
	du -sh .gpu/*
