# olla: three commands on a fresh machine.  `make demo` runs olla in front of a real Ollama and
# a real llama.cpp server it installs (no Ollama of your own needed); `make run` serves
# etc/olla.yaml; `make test` runs lint, types and the whole suite.  All create .venv on first
# use.  `make test-real` runs the compatibility suite against a real Ollama, a real llama.cpp
# server and real clients (CI runs both tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= etc/olla.yaml
# make demo: olla's port (taken or 0: a free one) and where its config, model stores, logs go.
DEMO_PORT ?= 40114
DEMO_DIR ?= .cache/demo
# Run from the working tree: twistd finds twisted/plugins/olla_plugin.py through PYTHONPATH.
export PYTHONPATH := $(CURDIR)

.PHONY: run demo test test-real lint typecheck unit chromium redis bench clean

# the plugin file too: twistd also scans the installed copy of twisted/plugins/, so a stale one
# would point at a module that moved
$(VENV)/.run-installed: pyproject.toml twisted/plugins/olla_plugin.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet .
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.run-installed
	$(PY) -m pip install --quiet '.[test]'
	touch $@

$(VENV)/.real-installed: pyproject.toml $(VENV)/.test-installed
	$(PY) -m pip install --quiet '.[test,real]'
	touch $@

run: $(VENV)/.run-installed
	$(VENV)/bin/twistd --nodaemon --pidfile= olla --config $(CONFIG)

# A real Ollama and llama.cpp's llama-server (installed into .cache/real like the real suite's,
# then reused) behind olla, in the foreground; Ctrl-C stops all of it.  See tests/real/demo.py.
demo: $(VENV)/.run-installed
	$(PY) -m tests.real.demo --port $(DEMO_PORT) --dir $(DEMO_DIR)

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy

unit: $(VENV)/.test-installed chromium redis
	$(PY) -m pytest -q --ignore=tests/real

# Debian's chromium for the dashboard's browser test: installed with apt-get when this runs as
# root and it is missing; otherwise the script says why that test will skip. Never fails.
chromium:
	@sh tests/e2e/install-chromium.sh

# Debian's redis-server for the shared-state tests (state.backend: redis): installed with
# apt-get when this runs as root and it is missing; otherwise those tests skip. Never fails.
redis:
	@sh tests/e2e/install-redis.sh

# The compatibility suite: a real Ollama, llama.cpp's llama-server and real clients (installed
# into .cache/real on first use by tests/real/install.sh, then reused).
test-real: $(VENV)/.real-installed
	$(PY) -m pytest -q -ra tests/real

test: lint typecheck unit

bench: $(VENV)/.run-installed
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
