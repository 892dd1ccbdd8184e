"""The machine's PostgreSQL and RabbitMQ as the tests see them: reachability, rabbitmqctl, killed connections,
copies of published messages."""

import socket
import subprocess
from collections.abc import Iterable

import psycopg
from django.db import connection


def reachable(host: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, text=True, timeout=timeout)


def rabbitmq_start_app() -> None:
    """start_app, then wait until the node serves again."""
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")


def terminate_own_connection() -> None:
    """pg_terminate_backend the current Django connection, as a database restart would."""
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def publish_copies(events: Iterable) -> None:
    """Publish another copy of each outbox event's messages (same event and task ids), confirmed.

    Outside the outbox on purpose: what a redelivery, a relay crash after the confirm or a
    replay does to the consumers.
    """
    from ordering.celery import app
    from ordering.messaging.publisher import ConfirmedPublisher, connection_for_confirmed_batches
    from ordering.messaging.relay import event_messages

    messages = [message for event in events for message in event_messages(app, event.envelope())]
    with connection_for_confirmed_batches(app) as broker:
        broker.ensure_connection(max_retries=5)
        publisher = ConfirmedPublisher(broker, confirm_timeout=10)
        try:
            publisher.publish(messages)
        finally:
            publisher.close()
