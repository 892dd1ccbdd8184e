"""The worker's own connection behaviour."""

import pytest
from celery.worker import consumer
from kombu import Connection
from kombu.exceptions import OperationalError

from ordering.celery import Consumer, app, reconnecting_quickly


def test_workers_use_the_quickly_reconnecting_consumer_and_never_give_up():
    assert app.conf.worker_consumer == "ordering.celery:Consumer"
    assert issubclass(Consumer, consumer.Consumer)
    assert app.conf.broker_connection_max_retries is None


def test_a_lost_broker_is_tried_again_within_seconds(settings):
    settings.MESSAGING = {**settings.MESSAGING, "BROKER_RECONNECT_MAX_SECONDS": 1.0}
    waits = []
    unreachable = reconnecting_quickly(Connection("amqp://guest:guest@127.0.0.1:1//", connect_timeout=1))
    with pytest.raises(OperationalError):
        unreachable.ensure_connection(lambda exc, interval: waits.append(interval), 5)
    # kombu's defaults would wait 2, 4, 6, 8 seconds (and up to 30).
    assert waits == [0.5, 1.0, 1.0, 1.0, 1.0]
