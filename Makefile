# The non-Docker way to run and test the ordering system. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell scripts/find-python.sh)
PORT ?= 8000
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ordering
export CELERY_BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//
# make run: each process group gets its own Prometheus multiprocess directory here (emptied when
# it starts), and the relay and workers an exporter port (web serves /metrics on $(PORT)).
METRICS_DIR ?= $(CURDIR)/tmp/metrics
BILLING_METRICS_PORT ?= 9101
ORDERS_METRICS_PORT ?= 9102
RELAY_METRICS_PORT ?= 9103

.PHONY: help venv lock db run demo-user flower test lint chaos chaos-long bench cluster cluster-stop clean

help:
	@echo "make run         start the whole system (web :$(PORT), relay, workers) in the foreground"
	@echo "make flower      Celery's monitor on http://127.0.0.1:5555, next to make run"
	@echo "make test        run the test suite against the local PostgreSQL and RabbitMQ"
	@echo "make demo-user   create a staff user 'demo' and print its API token (TOKEN=\$$(make -s demo-user ARGS=--token-only))"
	@echo "make chaos       the short fault-injection run with its ledger check (ARGS=--cluster: on make cluster's nodes)"
	@echo "make chaos-long  the long fault-injection run (>= 10,000 orders, >= 20 faults; ARGS=--cluster too)"
	@echo "make bench       throughput and latency numbers of the pipeline (ARGS=\"--broker both\": one node and three)"
	@echo "make cluster     start a three-node RabbitMQ cluster on 5673-5675 (make cluster-stop stops it)"
	@echo "make lint        ruff"
	@echo "make lock        re-resolve requirements/*.in into the hashed requirements/*.txt"
	@echo "make clean       remove the virtualenv, collected static files and caches"

$(BIN)/.installed: requirements.txt requirements/runtime.txt requirements/dev.txt
	@test -n "$(PYTHON)" || { scripts/find-python.sh; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

venv: $(BIN)/.installed

# The lock files pin every package with its hashes (pip then checks each download). The lock is
# universal (markers for every platform and Python >= 3.12), so one lock serves every machine.
lock: venv
	cd requirements && ../$(BIN)/uv pip compile runtime.in --universal --python-version 3.12 --generate-hashes --no-header -q -o runtime.txt
	cd requirements && ../$(BIN)/uv pip compile dev.in --universal --python-version 3.12 --generate-hashes --no-header -q -o dev.txt

db: venv
	$(BIN)/python scripts/ensure_database.py
	$(BIN)/python manage.py migrate --noinput -v 0
	$(BIN)/python manage.py collectstatic --noinput -v 0

run: export DEBUG ?= true
run: export LOG_FORMAT ?= text
run: db
	$(BIN)/python manage.py declare_topology
	@# Where things are, printed once web answers (below the start-up banners, not above them).
	@$(BIN)/python scripts/announce.py $(PORT) &
	@# The Procfile's commands, each with its metrics environment (prometheus_client reads it at import).
	@mkdir -p tmp
	sed -e 's|^web: |web: PROMETHEUS_MULTIPROC_DIR=$(METRICS_DIR)/web |' \
	    -e 's|^relay: |relay: PROMETHEUS_MULTIPROC_DIR=$(METRICS_DIR)/relay METRICS_PORT=$(RELAY_METRICS_PORT) |' \
	    -e 's|^billing: |billing: PROMETHEUS_MULTIPROC_DIR=$(METRICS_DIR)/billing METRICS_PORT=$(BILLING_METRICS_PORT) |' \
	    -e 's|^orders: |orders: PROMETHEUS_MULTIPROC_DIR=$(METRICS_DIR)/orders METRICS_PORT=$(ORDERS_METRICS_PORT) |' \
	    Procfile > tmp/Procfile.run
	@# Ctrl-C ends honcho with 130: that is how this target is meant to stop, not an error.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho --procfile tmp/Procfile.run --app-root $(CURDIR) start --port $(PORT) \
	    || test $$? -eq 130

demo-user: export DEBUG ?= true
demo-user: export PORT := $(PORT)
demo-user: db
	@$(BIN)/python manage.py create_demo_user $(ARGS)

flower: export DEBUG ?= true
flower: venv
	$(BIN)/celery -A ordering flower --address=127.0.0.1 --port=5555 || test $$? -eq 130

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

chaos: venv
	$(BIN)/python -m tests.chaos.run $(CHAOS_ARGS) $(ARGS)

chaos-long: venv
	$(BIN)/python -m tests.chaos.run --orders 10000 --faults 26 $(CHAOS_ARGS) $(ARGS)

bench: venv
	$(BIN)/python -m tests.bench $(BENCH_ARGS) $(ARGS)

# A three-node RabbitMQ cluster from the installed rabbitmq-server, beside the machine's own node
# (untouched). `make run CELERY_BROKER_URL="$$(scripts/rabbitmq-cluster.sh urls)"` runs against it.
cluster:
	scripts/rabbitmq-cluster.sh start

cluster-stop:
	scripts/rabbitmq-cluster.sh stop

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
