# Two commands set everything up on a fresh machine:
#   make demo   - bootstrap .venv, then run the main job on the embedded digits data
#   make test   - bootstrap .venv, then run the default (fast) test tier
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.attribshield-installed
PYTEST_ARGS ?=

# glibc's default malloc halves PyTorch's throughput here (docs/performance.md)
export MALLOC_MMAP_THRESHOLD_ = 1073741824
export MALLOC_TRIM_THRESHOLD_ = 17179869184
export MALLOC_TOP_PAD_ = 268435456

.PHONY: demo test test-slow test-all bench venv clean

venv: $(STAMP)

# (Re)install when the venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m attribshield demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not cuda" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not cuda" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
