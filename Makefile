# Two set-up commands (README): `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment in .venv if it is missing and installs everything.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stopgrad-installed
# where the offline CIFAR-10 copy lives (a folder with cifar10-jpeg.npz or a torchvision root)
export STOPGRAD_DATA ?= $(abspath ../shared/data)

.PHONY: install demo test test-slow check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stopgrad demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" -p no:cacheprovider

check: $(STAMP)
	$(VENV)/bin/stopgrad check

bench: $(STAMP)
	$(PY) benchmarks/bench_dynamics.py

clean:
	rm -rf out .pytest_cache
