"""pytest plugin (loaded with -p before Django is configured): a database and vhost per run.

Each run gets its own PostgreSQL database (pytest-django creates `test_<name>` and drops it)
and its own RabbitMQ vhost (created with rabbitmqctl, deleted at the end), so runs never see
each other's rows or messages. A missing service is an error, never a skip.
"""

import os
import shutil
import uuid

import pytest

from tests.services import rabbitmqctl, reachable

RUN_ID = uuid.uuid4().hex[:8]
VHOST = f"ordering-test-{RUN_ID}"
PG_ADDRESS = ("127.0.0.1", 5432)
AMQP_ADDRESS = ("127.0.0.1", 5672)

os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/ordering_{RUN_ID}"
os.environ["CELERY_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def pytest_configure(config: pytest.Config) -> None:
    missing = []
    if not reachable(*PG_ADDRESS):
        missing.append("PostgreSQL on 127.0.0.1:5432 (pg_ctlcluster <version> main start)")
    if not reachable(*AMQP_ADDRESS):
        missing.append("RabbitMQ on 127.0.0.1:5672 (rabbitmq-server -detached)")
    if shutil.which("rabbitmqctl") is None:
        missing.append("rabbitmqctl on PATH (to create the test run's vhost)")
    if missing:
        raise pytest.UsageError("the tests need these services, which are not available: " + "; ".join(missing))
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")


def pytest_unconfigure(config: pytest.Config) -> None:
    if reachable(*AMQP_ADDRESS):
        rabbitmqctl("delete_vhost", VHOST, check=False)
