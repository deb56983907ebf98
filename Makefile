# pairfree: `make demo` and `make test` work on a fresh machine (they create .venv on first use).
# On CPU machines torch is pinned to the local CPU build; on a GPU machine pass your own, e.g.
#   make test TORCH_SPEC='torch==2.11.0'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pairfree-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*)

.PHONY: install demo test test-slow test-all lint bench gpu-wheels clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q "$(TORCH_SPEC)" numpy
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pairfree demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check pairfree tests benchmarks setup.py
	$(VENV)/bin/ruff format --check pairfree tests benchmarks setup.py

bench: $(STAMP)
	$(PY) benchmarks/modulated_norm.py
	$(PY) benchmarks/dit_block.py

# the pure-Python wheels benchmarks/gpu_check.sh installs on a GPU machine without diffusers or network
# (Python 3.12); wheels/ is ignored by git: carry it to that machine
GPU_WHEELS ?= diffusers==0.42.1 importlib_metadata zipp
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d wheels $(GPU_WHEELS)

clean:
	rm -rf build *.egg-info pairfree/_C*.so $(VENV)
