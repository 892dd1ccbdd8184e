# The non-Docker way to run and test the ordering system. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell scripts/find-python.sh)
PORT ?= 8000
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ordering
export CELERY_BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: help venv db run demo-user test lint chaos chaos-long bench compose-check clean

help:
	@echo "make run         start the whole system (web :$(PORT), relay, workers) in the foreground"
	@echo "make test        run the test suite against the local PostgreSQL and RabbitMQ"
	@echo "make demo-user   create a staff user 'demo' and print its API token"
	@echo "make chaos       the short fault-injection run with its ledger check"
	@echo "make chaos-long  the long fault-injection run (>= 10,000 orders, >= 20 faults)"
	@echo "make bench       throughput and latency numbers of the pipeline"
	@echo "make lint        ruff"

$(BIN)/.installed: requirements.txt
	@test -n "$(PYTHON)" || { scripts/find-python.sh; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

venv: $(BIN)/.installed

db: venv
	$(BIN)/python scripts/ensure_database.py
	$(BIN)/python manage.py migrate --noinput -v 0
	$(BIN)/python manage.py collectstatic --noinput -v 0

run: export DEBUG ?= true
run: db
	$(BIN)/python manage.py declare_topology
	@echo ""
	@echo "  API          http://127.0.0.1:$(PORT)/api/orders/"
	@echo "  API docs     http://127.0.0.1:$(PORT)/api/docs/"
	@echo "  Admin        http://127.0.0.1:$(PORT)/admin/"
	@echo "  Login/token  in another terminal: make demo-user   (user demo / demo-password)"
	@echo "  Stop         Ctrl-C (warm shutdown: running tasks finish first)"
	@echo ""
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start --port $(PORT)

demo-user: export DEBUG ?= true
demo-user: db
	$(BIN)/python manage.py create_demo_user

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

chaos: venv
	$(BIN)/python -m tests.chaos.run $(CHAOS_ARGS)

chaos-long: venv
	$(BIN)/python -m tests.chaos.run --orders 10000 --faults 24 $(CHAOS_ARGS)

bench: venv
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
