"""Readiness checks of the pipeline for django-health-check (`/health/ready`).

The library checks the database; these check what an order needs beyond it: the broker answers,
every consumer queue exists and has a consumer (a worker is there to take the events), and the
outbox is being published (no event waits longer than READY_OUTBOX_LAG_SECONDS).
"""

import dataclasses
from datetime import timedelta

from django.conf import settings
from django.db import connection
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

from ordering import catalogue
from ordering.messaging.broker import connect
from ordering.messaging.selectors import outbox_backlog


@dataclasses.dataclass
class ConsumerQueues(HealthCheck):
    """RabbitMQ answers, and each consumer queue exists and has at least one consumer."""

    def run(self) -> None:
        from ordering.celery import app

        try:
            with app.connection_for_read() as broker:
                connect(broker, timeout=3)
                channel = broker.channel()
                idle = []
                for queue in catalogue.CONSUMER_QUEUES:
                    if channel.queue_declare(queue=queue, passive=True).consumer_count == 0:
                        idle.append(queue)
        except Exception as exc:  # any failure to look is "not ready", never a 500 of its own
            raise ServiceUnavailable(f"broker or consumer queues unavailable ({type(exc).__name__})") from exc
        if idle:
            raise ServiceUnavailable(f"no consumer on {', '.join(idle)}")


@dataclasses.dataclass
class OutboxPublished(HealthCheck):
    """No committed event has waited for the relay longer than READY_OUTBOX_LAG_SECONDS."""

    def run(self) -> None:
        lag = timedelta(seconds=settings.MESSAGING["READY_OUTBOX_LAG_SECONDS"])
        try:
            waiting = outbox_backlog(older_than=lag)
        finally:
            # Runs in an executor thread: its connection is not one a request would close.
            connection.close()
        if waiting:
            raise ServiceUnavailable(f"{waiting} events unpublished for over {lag.total_seconds():.0f} s")
