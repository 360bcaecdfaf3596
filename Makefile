# Set-up and everyday commands. `make demo` and `make test` install everything themselves.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all lint bench-ingest clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# pyradiomics 3.0.1 builds its C extensions against the installed numpy and needs these first;
	# PyPI's 3.1.0 sdist is broken, so it is pinned and built without isolation.
	$(PIP) install numpy setuptools wheel versioneer
	$(PIP) install --no-build-isolation pyradiomics==3.0.1
	# torch and torchvision as a matched pair (a lone CPU torch breaks torchvision).
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/atrx demo $(DEMO_ARGS)

# `make test` skips the tests marked slow (the 100k-voxel engine agreement cases, the faults
# suite's server, the synthetic-cohort PHI ingest) to stay within about 15 minutes on 2 cores;
# `make test-all` runs every test.
PYTEST_ARGS ?= -m "not slow"

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench-ingest: $(STAMP)
	$(PY) benchmarks/ingest/run.py

clean:
	rm -rf $(VENV) .atrx
