# Two commands from a clean clone: `make demo` runs the demo, `make test` runs the tests.
# Both create the virtualenv (.venv) and install the pinned dependency set when missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# The PostgreSQL that deploy/dagster/dagster.yaml reads: by default the project's cluster, which
# `make postgres` starts and the tests of Dagster on Postgres use.
export DAGSTER_PG_HOST ?= 127.0.0.1
export DAGSTER_PG_PORT ?= 55432
export DAGSTER_PG_USER ?= dagster
export DAGSTER_PG_PASSWORD ?= dagster
export DAGSTER_PG_DB ?= dagster

.PHONY: demo test ui lint postgres postgres-stop

$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/featureplane demo

# The tests of Dagster on Postgres use the project's cluster: it is started (and left running,
# for the next run; `make postgres-stop` stops it).
test: $(BIN)/.installed postgres
	$(BIN)/python -m pytest

# The UI, with synthetic events appended to the demo's sources every few minutes while it runs.
ui: $(BIN)/.installed
	$(BIN)/featureplane demo --append-only & appender=$$!; \
	trap 'kill $$appender 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster dev -w workspace.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The project's PostgreSQL cluster (.postgres/), installed from Debian's packages when missing.
postgres:
	deploy/postgres.sh start

postgres-stop:
	deploy/postgres.sh stop
