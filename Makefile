# Two commands set everything up on a fresh machine:
#   make demo   - bootstrap .venv, then run the main job on the embedded digits data
#   make test   - bootstrap .venv, then run the default (fast) test tier
# Also: make docs (Sphinx site in docs/_build/html, warnings are errors), make lint (ruff).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.attribshield-installed
DOCS_STAMP := $(VENV)/.attribshield-docs-installed
PYTEST_ARGS ?=
SPHINXOPTS ?=

# glibc's default malloc halves PyTorch's throughput here (docs/performance.md)
export MALLOC_MMAP_THRESHOLD_ = 1073741824
export MALLOC_TRIM_THRESHOLD_ = 17179869184
export MALLOC_TOP_PAD_ = 268435456

.PHONY: gpu-check demo test test-slow test-all bench venv docs lint clean

venv: $(STAMP)

# (Re)install when the venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

# The docs extra (sphinx, numpydoc, myst-parser) only for `make docs`: `make test` does not need it.
# One resolve with the test extra, so pip keeps both sets consistent (torchattacks pins requests).
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,docs]"
	@touch $(DOCS_STAMP)

demo: $(STAMP)
	$(PY) -m attribshield demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not cuda" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not cuda" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# HTML site in docs/_build/html (API pages regenerated into docs/api/ from the packages' __all__).
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -b html -W --keep-going -q $(SPHINXOPTS) docs docs/_build/html

lint: $(STAMP)
	$(PY) -m ruff check

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build docs/api

# On a machine with a CUDA GPU: CUDA tests, device throughput, two short CIFAR-10 runs -> one JSON
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out runs/gpu_check.json
