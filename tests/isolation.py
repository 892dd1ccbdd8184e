"""pytest plugin (loaded with -p before Django is configured): a database, vhost and cache prefix per run.

Each run gets its own PostgreSQL database (pytest-django creates `test_<name>` and drops it)
and its own RabbitMQ vhost (created with rabbitmqctl, deleted at the end), so runs never see
each other's rows or messages. A missing service is an error, never a skip.
"""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.services import rabbitmqctl, reachable

RUN_ID = uuid.uuid4().hex[:8]
VHOST = f"ordering-test-{RUN_ID}"
PG_ADDRESS = ("127.0.0.1", 5432)
AMQP_ADDRESS = ("127.0.0.1", 5672)
REDIS_ADDRESS = ("127.0.0.1", 6379)

os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/ordering_{RUN_ID}"
os.environ["CELERY_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
# The throttles' counters (Redis) under the run's own prefix: runs never share a count.
os.environ["CACHE_URL"] = f"redis://{REDIS_ADDRESS[0]}:{REDIS_ADDRESS[1]}/0"
os.environ["CACHE_KEY_PREFIX"] = f"ordering-test-{RUN_ID}"
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
# Tests and the processes they start (which inherit this environment) serve plain HTTP with
# DEBUG off: production's HTTPS redirect would answer every request with a 301.
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Hypothesis (tests/test_schema_contract.py) caches what it learns under ./.hypothesis even without
# an example database: the run's own directory instead, removed at the end, so nothing is left behind.
HYPOTHESIS_DIR = Path(tempfile.gettempdir()) / f"ordering-test-{RUN_ID}-hypothesis"
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(HYPOTHESIS_DIR)


def pytest_configure(config: pytest.Config) -> None:
    missing = []
    if not reachable(*PG_ADDRESS):
        missing.append("PostgreSQL on 127.0.0.1:5432 (pg_ctlcluster <version> main start)")
    if not reachable(*AMQP_ADDRESS):
        missing.append("RabbitMQ on 127.0.0.1:5672 (rabbitmq-server -detached)")
    if not reachable(*REDIS_ADDRESS):
        missing.append("Redis on 127.0.0.1:6379 (redis-server --daemonize yes)")
    if shutil.which("rabbitmqctl") is None:
        missing.append("rabbitmqctl on PATH (to create the test run's vhost)")
    if missing:
        raise pytest.UsageError("the tests need these services, which are not available: " + "; ".join(missing))
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(HYPOTHESIS_DIR, ignore_errors=True)
    if reachable(*AMQP_ADDRESS):
        rabbitmqctl("delete_vhost", VHOST, check=False)
