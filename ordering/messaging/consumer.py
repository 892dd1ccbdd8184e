"""The consumer task: how one event message becomes one call of a domain service.

A consumer task is an endpoint for a message: it parses the envelope, sets the correlation id,
calls one handler, and leaves the retry / reject decision to the policy defined here:

- transient errors (database unavailable, gateway outage or timeout, soft time limit) are
  retried with capped exponential backoff and jitter, a bounded number of times; the retry
  waits in RabbitMQ (native delayed delivery), not in the worker;
- anything else (malformed envelope, unknown version, invalid payload, a bug) fails at once;
- a task that failed for good is rejected, so RabbitMQ dead-letters it to the queue's DLQ, and
  django-celery-results records the exception and traceback (the dead letter's details).

Handlers must be idempotent: they record the event id in the inbox in the transaction of their
effect (ordering/messaging/inbox.py).
"""

import logging
import math
import random
from collections.abc import Callable

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from ordering import catalogue
from ordering.messaging.context import handling_event
from ordering.messaging.envelope import Envelope
from ordering.messaging.errors import TransientError, UnknownEventVersion

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    TransientError,
    SoftTimeLimitExceeded,
)

# handler(envelope, consumer): `consumer` is the task name, the inbox key of its effects.
Handler = Callable[[Envelope, str], None]


class EventConsumerTask(Task):
    """Base class of every consumer task; the reliability settings are in settings.CELERY_*."""

    acks_late = True
    ignore_result = True

    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        # Stored with a retry or failure by django-celery-results (TaskResult.meta): the
        # dead letter's details. The queue comes from the catalogue, not from the delivery's
        # routing key, which for a retry carries the delay-exchange prefix. The envelope is
        # kept whole here because task_kwargs only gets Celery's kwargsrepr (a short summary).
        self.request.meta = {
            "queue": catalogue.queue_of_task(self.name),
            "retries": self.request.retries,
            "envelope": kwargs.get("envelope"),
        }
        ensure_usable_database()


def ensure_usable_database() -> None:
    """Drop database connections a restart broke, before a task uses them.

    With CELERY_DB_REUSE_MAX, Celery keeps connections across tasks without Django's
    request-cycle checks, so after a PostgreSQL restart every task would fail on the dead
    connection. This runs those checks: unusable or too old connections are closed, and the
    next query health-checks (and if needed reopens) its connection.
    """
    close_old_connections()


def retry_countdown(retries: int) -> int:
    """Seconds before retry number `retries + 1`: exponential, capped, with "equal jitter".

    Half of the backoff is fixed and half random. Celery's own retry_jitter is full jitter
    (anywhere from 0 to the backoff), which can spend the whole retry budget in a few seconds
    and dead-letter a message during an outage its backoff was sized to outlast. Whole seconds,
    at least 1: the delay travels through RabbitMQ's native delayed delivery.
    """
    messaging = settings.MESSAGING
    backoff = min(messaging["RETRY_BACKOFF_MAX_SECONDS"], messaging["RETRY_BACKOFF_SECONDS"] * 2**retries)
    if messaging["RETRY_JITTER"]:
        backoff = backoff / 2 + random.uniform(0, backoff / 2)
    return max(1, math.ceil(backoff))


def event_consumer(*, name: str, event_type: str) -> Callable[[Handler], Task]:
    """Turn `handler(envelope, consumer)` into the consumer task `name` for events of `event_type`."""
    messaging = settings.MESSAGING

    def decorator(handler: Handler) -> Task:
        def run(self: Task, envelope: dict) -> None:
            parsed = Envelope.from_wire(envelope)
            with handling_event(event_id=parsed.event_id, correlation_id=parsed.correlation_id):
                if parsed.event_type != event_type:
                    raise UnknownEventVersion(f"{name} handles {event_type}, got {parsed.event_type}")
                logger.info(
                    "%s: handling %s %s (attempt %d)",
                    name,
                    parsed.event_type,
                    parsed.event_id,
                    self.request.retries + 1,
                )
                try:
                    handler(parsed, name)
                except TRANSIENT_ERRORS as exc:
                    logger.warning("%s: %s: %s", name, type(exc).__name__, exc)
                    # Past max_retries, retry() re-raises exc: the task fails and is dead-lettered.
                    raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return shared_task(
            name=name,
            bind=True,
            base=EventConsumerTask,
            max_retries=messaging["RETRY_MAX"],
        )(run)

    return decorator
