# One entry point for every routine task. Each target that runs code depends on `setup`,
# so a fresh machine needs nothing but `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The machine's pip config lists local mirrors that do not hold every package: silence the
# resulting "Location ... is ignored" noise, keep real errors.
PIP = $(PY) -m pip install -q --disable-pip-version-check
QUIET_PIP = 2> >(grep -v 'is ignored' >&2)
DEMO_DIR ?= runs/demo
DEMO_ROWS ?= 200000
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch goes in first and exactly: the CPU wheel lies on disk, and any looser requirement
# resolved later would pull a multi-GB CUDA build from the registry.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip "setuptools>=77" wheel $(QUIET_PIP)
	$(PIP) torch==2.13.0 $(QUIET_PIP)
	$(PIP) -e ".[dev]" $(QUIET_PIP)
	$(PIP) --no-deps petastorm==0.13.1 $(QUIET_PIP)
	@# pip's spark-submit runs the python3 first on PATH: bind the venv's to the venv
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/fm-spark-submit" "$$@"\n' > $(VENV)/bin/spark-submit
	$(PY) -m fm_spark.models.ffm_kernel  # FFM's C++ pair kernel, into torch's extension cache
	$(PY) -m fm_spark.train.row_kernel  # the row optimizer's C++ update rules, likewise
	touch $(STAMP)

demo: setup
	$(VENV)/bin/fm-spark demo --workdir $(DEMO_DIR) --rows $(DEMO_ROWS)

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check fm_spark jobs tests
	$(VENV)/bin/ruff format --check fm_spark jobs tests

bench: setup
	$(PY) -m fm_spark.bench --out BENCHMARKS.md

clean:
	rm -rf runs spark-warehouse metastore_db derby.log .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
