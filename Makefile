# The commands of the quick start: `make dev` and `make test`. Each creates the project's virtual
# environment on first use (and again whenever pyproject.toml changes). `make dev` is only a
# shortcut: with the venv active, `dagster dev` from this folder does the same.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: dev test lint stop env clean-state

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP) env
	$(VENV)/bin/crypto-platform dev

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy crypto_platform

# Ends what the platform started in the background: the ingester, the simulator, the fakesnow server.
stop: $(STAMP)
	$(VENV)/bin/crypto-platform services stop

# Dagster's CLI reads ./.env before it looks for DAGSTER_HOME. This line makes every dagster / dg
# command run from here use the project itself as its home (no temporary directory, and
# `dagster-daemon run`, which refuses to run without a home, works); a DAGSTER_HOME already set in
# the environment still wins. Other lines of .env (your own variables) are left alone.
env:
	@grep -qs '^DAGSTER_HOME=' .env || echo 'DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)}' >> .env
	@grep '^DAGSTER_HOME=' .env

clean-state: stop
	rm -rf var .dagster_home
