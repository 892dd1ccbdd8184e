"""Real relay and worker processes on the test run's database and RabbitMQ vhost."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from ordering.celery import app
from ordering.messaging.topology import declare_topology
from orders.models import Order
from tests.processes import ManagedProcess, ProcessGroup, wait_until

# Short retry budget so the dead-letter paths run in seconds: 3 retries, 1 s then 2 s (jittered).
WORKER_ENV = {
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
    "CONSUMER_RETRY_MAX": "3",
    "CONSUMER_RETRY_BACKOFF_SECONDS": "1",
    "CONSUMER_RETRY_BACKOFF_MAX_SECONDS": "2",
    "RELAY_SWEEP_SECONDS": "1",
}
RETRY_MAX = 3


def process_env() -> dict[str, str]:
    settings = connection.settings_dict
    env = {**os.environ, **WORKER_ENV}
    env["DATABASE_URL"] = (
        f"postgres://{settings['USER'] or 'postgres'}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    )
    return env


@pytest.fixture(scope="package")
def system(django_db_setup, django_db_blocker, tmp_path_factory):
    """Relay, billing worker and orders worker, started once for the integration tests.

    Package scope: they stop after this package, so other tests own the queues again.
    """
    with app.connection_for_write() as conn:
        declare_topology(conn)
    group = ProcessGroup(env=process_env(), log_dir=tmp_path_factory.mktemp("logs"))
    group.add_relay()
    group.add_worker("billing", "billing.events")
    group.add_worker("orders", "orders.events")
    try:
        group.start_all()
        yield group
    finally:
        group.stop_all()


@contextmanager
def reconfigured(process: ManagedProcess, **env: str) -> Iterator[ManagedProcess]:
    """Run `process` with extra environment for the duration, then as it was."""
    saved = process.env
    process.stop()
    process.env = {**saved, **env}
    process.start()
    try:
        yield process
    finally:
        process.stop()
        process.env = saved
        process.start()


def wait_for_status(order_id, *statuses: str, timeout: float = 30) -> Order:
    wait_until(
        lambda: Order.objects.filter(pk=order_id, status__in=statuses).exists(),
        timeout=timeout,
        message=f"order {order_id} to reach {statuses}",
    )
    return Order.objects.get(pk=order_id)


def queue_depth(name: str) -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=name, passive=True).message_count
