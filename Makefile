# Two set-up commands (README): `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment in .venv if it is missing and installs everything.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stopgrad-installed
# where the offline CIFAR-10 copy lives (a folder with cifar10-jpeg.npz or a torchvision root)
export STOPGRAD_DATA ?= $(abspath ../shared/data)

.PHONY: install demo test test-properties test-properties-slow test-slow check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stopgrad demo --out out/demo

# the property suite (tests/properties) runs under the hypothesis profile "ci" (bounded, derandomized);
# --hypothesis-show-statistics prints the examples each property ran and where its time went
test: $(STAMP)
	$(PY) -m pytest -q --hypothesis-show-statistics

test-properties: $(STAMP)
	$(PY) -m pytest -q tests/properties --hypothesis-show-statistics

# thousands of examples per property (random, not derandomized): minutes to an hour
test-properties-slow: $(STAMP)
	HYPOTHESIS_PROFILE=slow $(PY) -m pytest -q tests/properties --hypothesis-show-statistics

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" -p no:cacheprovider

check: $(STAMP)
	$(VENV)/bin/stopgrad check

bench: $(STAMP)
	$(PY) benchmarks/bench_dynamics.py

clean:
	rm -rf out .pytest_cache
