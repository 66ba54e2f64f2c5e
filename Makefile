# Each target does its own set-up: a newcomer types `make demo` or `make test`, nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

## The main job: offline NAGN-driven growth on scikit-learn's bundled 8x8 digits.
demo: $(STAMP)
	$(PY) -m benchmarks.grow_cifar --preset demo --out runs/demo

## The whole test suite, with the docstring examples in netsurgeon/ (doctests) and the benchmark tests.
test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/bench_widen.py
	$(PY) benchmarks/bench_nagn.py
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
