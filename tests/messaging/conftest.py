"""Broker helpers for messaging tests that publish and read real messages (no workers running)."""

import pytest

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.topology import declare_topology


@pytest.fixture
def broker():
    """A connection to the test vhost with the topology declared and every queue empty."""
    with app.connection_for_write() as conn:
        declare_topology(conn)
        channel = conn.default_channel
        for queue in catalogue.CONSUMER_QUEUES:
            channel.queue_purge(queue)
            channel.queue_purge(catalogue.dead_letter_queue(queue))
        yield conn


def drain(conn, queue: str) -> list:
    """Take every message from `queue` (acking each) and return them."""
    from kombu import Queue

    bound = Queue(queue, no_declare=True).bind(conn.default_channel)
    messages = []
    while (message := bound.get(no_ack=True, accept=["json"])) is not None:
        messages.append(message)
    return messages
