"""The consumer machinery: how event messages become calls of domain services, a batch at a time.

A consumer task is an endpoint for messages. The worker hands it every message of its type that
is waiting (ordering/messaging/batching.py), and this module turns them into effects:

- effect once: in the consumer's transaction the machinery records each event in the inbox
  (consumer, event id) and calls the handler only for the events recorded there and then; a
  duplicate, a redelivery after a crash or a replay finds its row and has no second effect;
- one transaction for the whole batch, so its events share one inbox insert and one commit; the
  worker acks the messages only after that commit (acks late);
- a batch that fails is taken apart: each message runs again on its own, so one bad message
  fails alone and the others are not held up;
- a transient error (database unavailable, gateway outage or timeout, soft time limit) is
  retried with capped exponential backoff and jitter, a bounded number of times, the retry
  waiting in RabbitMQ (native delayed delivery); anything else (malformed envelope, unknown
  version, invalid payload, a bug) fails at once;
- a message that failed for good is rejected, so RabbitMQ dead-letters it to the queue's DLQ,
  and django-celery-results records the exception, traceback and envelope (the dead letter).

Handlers come in two kinds. A *transactional* handler takes one envelope and runs inside the
machinery's transaction, after the inbox row (`event_consumer`). A flow that must call out of the
database between two transactions (billing and its payment gateway) takes the whole batch and
claims the inbox rows itself, in the transaction of its effect (`event_consumer(...,
transactional=False)`, `EventBatch`).
"""

import json
import logging
import math
import random
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task, shared_task
from celery.app.task import Context
from celery.exceptions import Retry
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from ordering import catalogue
from ordering.messaging import metrics
from ordering.messaging.context import EVENT_HEADERS, handling_event, log_fields_of_headers
from ordering.messaging.envelope import DomainEvent, Envelope
from ordering.messaging.errors import MalformedEnvelope, TransientError, UnknownEventVersion
from ordering.messaging.inbox import inbox_claim
from ordering.messaging.outbox import outbox_collected

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    TransientError,
    SoftTimeLimitExceeded,
)

# Celery's own log lines for a received and a succeeded task, kept word for word: operators grep
# for them. The batching strategy bypasses Celery's tracer, which would write them.
LOG_RECEIVED = "Task %s[%s] received"
LOG_SUCCEEDED = "Task %s[%s] succeeded in %ss: None"


class Outcome(StrEnum):
    """What the worker does with a message once the machinery is done with it."""

    ACK = "ack"  # handled, or a duplicate: done
    RETRY = "retry"  # acked too: the retry is a new message
    REJECT = "reject"  # failed for good: RabbitMQ dead-letters it


@dataclass(frozen=True)
class Delivery:
    """One task message as the worker received it; picklable, it travels to a pool process."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    delivery_info: dict[str, Any]
    body: bytes
    hostname: str = ""

    @property
    def task_id(self) -> str:
        return self.headers.get("id", "")

    @property
    def task_name(self) -> str:
        return self.headers.get("task", "")

    @property
    def retries(self) -> int:
        return self.headers.get("retries") or 0

    def log_fields(self) -> dict[str, Any]:
        """The fields of this message's log lines: task, task id, and its event's ids (from the headers)."""
        return {"task": self.task_name, "task_id": self.task_id, **log_fields_of_headers(self.headers)}

    def payload(self) -> tuple[tuple, dict, dict]:
        """(args, kwargs, embed) of Celery's message protocol 2."""
        args, kwargs, embed = json.loads(self.body)
        return args, kwargs, embed

    def request(self, **extra: Any) -> Context:
        """The task request Celery would build for this message (retries, failure records)."""
        try:
            args, kwargs, embed = self.payload()
        except (ValueError, TypeError):
            args, kwargs, embed = (), {}, {}
        return Context(
            self.headers,
            args=args,
            kwargs=kwargs,
            **(embed if isinstance(embed, dict) else {}),
            properties=self.properties,
            reply_to=self.properties.get("reply_to"),
            correlation_id=self.properties.get("correlation_id"),
            # A retry is a new message: it names its event in its headers too.
            headers={name: self.headers[name] for name in EVENT_HEADERS.values() if name in self.headers},
            hostname=self.hostname,
            delivery_info=self.delivery_info,
            is_eager=False,
            called_directly=False,
            **extra,
        )


class EventBatch:
    """The events a non-transactional handler gets: their envelopes, the inbox, the event contexts."""

    def __init__(self, consumer: str, envelopes: list[Envelope]) -> None:
        self.consumer = consumer
        self.envelopes = envelopes
        self.duplicates = 0  # envelopes claim() found in the inbox already

    def claim(self, envelopes: list[Envelope]) -> list[Envelope]:
        """Record `envelopes` in the inbox, in the caller's transaction; returns those not seen before."""
        claimed = inbox_claim(consumer=self.consumer, envelopes=envelopes)
        self.duplicates += len(envelopes) - len(claimed)
        return claimed

    def each[E: DomainEvent](self, envelopes: list[Envelope], event_class: type[E]) -> Iterator[tuple[Envelope, E]]:
        """Each envelope with its payload, inside its event's context.

        Log lines carry the event's correlation id, and events recorded in the outbox meanwhile
        name it as their cause.
        """
        for envelope in envelopes:
            with handling_event(envelope):
                yield envelope, envelope.event(event_class)


TransactionalHandler = Callable[[Envelope], None]
BatchHandler = Callable[[EventBatch], None]


class EventConsumerTask(Task):
    """Base class of every consumer task; the reliability settings are in settings.CELERY_*.

    The worker runs these through the batching strategy, never through Celery's per-message
    tracer; calling the task directly runs the same machinery for one envelope.
    """

    acks_late = True
    ignore_result = True
    Strategy = "ordering.messaging.batching:batching_strategy"

    event_type: str = ""
    transactional: bool = True
    handler: Callable[..., None]

    def run(self, envelope: dict) -> None:
        """Handle one envelope here and now, as the worker would; raises what failed it."""
        parsed = _parse(self, {"envelope": envelope})
        _handle(self, [parsed])


def event_consumer(
    *, name: str, event_type: str, transactional: bool = True
) -> Callable[[Callable[..., None]], EventConsumerTask]:
    """Turn a handler into the consumer task `name` for events of `event_type`.

    Transactional (the default): `handler(envelope)` runs once per new event inside the batch's
    transaction, after its inbox row. Otherwise `handler(batch: EventBatch)` gets the batch and
    claims the inbox rows in the transaction of its effect.
    """

    def decorator(handler: Callable[..., None]) -> EventConsumerTask:
        def run(self: EventConsumerTask, envelope: dict) -> None:
            EventConsumerTask.run(self, envelope)

        run.__name__ = handler.__name__
        run.__doc__ = handler.__doc__
        return shared_task(
            name=name,
            bind=True,
            base=EventConsumerTask,
            max_retries=settings.MESSAGING["RETRY_MAX"],
            event_type=event_type,
            transactional=transactional,
            handler=staticmethod(handler),
        )(run)

    return decorator


def ensure_usable_database() -> None:
    """Before a batch: drop the connection if it is older than CONN_MAX_AGE or a failure left it in doubt.

    No query on the way (a health check would cost a round trip per batch): a connection that a
    database restart broke since the last batch is found by the batch itself, which then runs
    again at once on a new connection (`_handle_reconnecting`). Inside a transaction (a caller's,
    as in a test) the connection is in use and left alone.
    """
    if connection.connection is None or connection.in_atomic_block:
        return
    if connection.errors_occurred or (connection.close_at is not None and time.monotonic() >= connection.close_at):
        connection.close_if_unusable_or_obsolete()


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


# --- The machinery --------------------------------------------------------------------------------


@dataclass
class _Parsed:
    delivery: Delivery | None
    envelope: Envelope


def consume(task: EventConsumerTask, deliveries: list[Delivery]) -> list[Outcome]:
    """Handle a batch of `task`'s messages; one outcome per delivery, in order. Never raises."""
    ensure_usable_database()
    outcomes: list[Outcome | None] = [None] * len(deliveries)
    parsed: list[tuple[int, _Parsed]] = []
    for index, delivery in enumerate(deliveries):
        try:
            _, kwargs, _ = delivery.payload()
            parsed.append((index, _parse(task, kwargs, delivery)))
        except Exception as exc:
            outcomes[index] = _fail(task, delivery, exc, _envelope_dict(delivery))
    if parsed:
        try:
            duplicates = _handle_reconnecting(task, [item for _, item in parsed])
            for index, _ in parsed:
                outcomes[index] = Outcome.ACK
            _count_handled(task, len(parsed), duplicates)
        except SoftTimeLimitExceeded as exc:
            # The batch as a whole ran out of time: one by one would take longer still.
            for index, item in parsed:
                outcomes[index] = _retry_or_fail(task, item, exc)
        except Exception as exc:
            if len(parsed) == 1:
                index, item = parsed[0]
                outcomes[index] = _retry_or_fail(task, item, exc)
            else:
                logger.info("%s: batch of %d failed (%s); each on its own", task.name, len(parsed), exc)
                for index, item in parsed:
                    outcomes[index] = _consume_alone(task, item)
    return [outcome or Outcome.REJECT for outcome in outcomes]


def _handle_reconnecting(task: EventConsumerTask, items: list[_Parsed]) -> int:
    """`_handle`, and once more at once after a database error.

    A connection that a database restart broke since the last batch fails the batch's first
    statement; Django has replaced it by the time the error arrives here, so the second run
    works. (A deadlock is worth an immediate second run too; a database that is down fails it
    as fast, and the retry policy takes over.) Safe to run again: a transactional handler's work
    was rolled back, and a stepwise handler resumes from what it committed, as after any
    redelivery.
    """
    try:
        return _handle(task, items)
    except (OperationalError, InterfaceError) as exc:
        if connection.in_atomic_block:
            raise
        logger.warning("%s: %s: %s; running the batch once more", task.name, type(exc).__name__, exc)
        connection.close()
        return _handle(task, items)


def _consume_alone(task: EventConsumerTask, item: _Parsed) -> Outcome:
    try:
        duplicates = _handle(task, [item])
    except Exception as exc:
        return _retry_or_fail(task, item, exc)
    _count_handled(task, 1, duplicates)
    return Outcome.ACK


def _count_handled(task: EventConsumerTask, acked: int, duplicates: int) -> None:
    # Counted only once the batch's transaction committed: a run that failed counts nothing.
    metrics.consumer_messages_count(task=task.name, outcome=metrics.HANDLED, count=acked - duplicates)
    metrics.consumer_messages_count(task=task.name, outcome=metrics.DUPLICATE, count=duplicates)


def _parse(task: EventConsumerTask, kwargs: object, delivery: Delivery | None = None) -> _Parsed:
    envelope_data = kwargs.get("envelope") if isinstance(kwargs, dict) else None
    if envelope_data is None:
        raise MalformedEnvelope("the task message carries no envelope")
    envelope = Envelope.from_wire(envelope_data)
    if envelope.event_type != task.event_type:
        raise UnknownEventVersion(f"{task.name} handles {task.event_type}, got {envelope.event_type}")
    return _Parsed(delivery=delivery, envelope=envelope)


def _handle(task: EventConsumerTask, items: list[_Parsed]) -> int:
    """Run the handler for `items`; raises whatever failed (the transaction is rolled back).

    Returns how many of them were duplicates (already in the inbox: no effect).
    """
    envelopes = [item.envelope for item in items]
    if not task.transactional:
        batch = EventBatch(task.name, envelopes)
        task.handler(batch)
        return batch.duplicates
    with transaction.atomic(), outbox_collected():
        claimed = inbox_claim(consumer=task.name, envelopes=envelopes)
        for envelope in claimed:
            with handling_event(envelope):
                task.handler(envelope)
    return len(envelopes) - len(claimed)


def _retry_or_fail(task: EventConsumerTask, item: _Parsed, exc: BaseException) -> Outcome:
    delivery, envelope = item.delivery, item.envelope
    if delivery is None:  # called directly: the caller sees the exception
        raise exc
    with handling_event(envelope):
        if not isinstance(exc, TRANSIENT_ERRORS):
            return _fail(task, delivery, exc, envelope.to_wire())
        logger.warning("%s: %s: %s", task.name, type(exc).__name__, exc, extra=delivery.log_fields())
        request = delivery.request(meta=_meta(task, delivery, envelope.to_wire()))
        task.request_stack.push(request)
        try:
            # Past max_retries, retry() re-raises exc: the message fails for good.
            retry = task.retry(exc=exc, countdown=retry_countdown(delivery.retries), throw=False)
        except Exception as final:
            return _fail(task, delivery, final, envelope.to_wire(), request=request)
        finally:
            task.request_stack.pop()
        logger.info("Task %s[%s] retry: %s", task.name, delivery.task_id, retry, extra=delivery.log_fields())
        _store(task.backend.mark_as_retry, delivery.task_id, exc, request)
        metrics.consumer_messages_count(task=task.name, outcome=metrics.RETRIED)
        return Outcome.RETRY


def _fail(
    task: EventConsumerTask,
    delivery: Delivery,
    exc: BaseException,
    envelope: dict[str, Any] | None,
    request: Context | None = None,
) -> Outcome:
    """Record the failure (the dead letter's details) and reject the message."""
    if isinstance(exc, Retry) and exc.exc is not None:
        exc = exc.exc
    request = request or delivery.request(meta=_meta(task, delivery, envelope))
    fields = {**delivery.log_fields(), **_envelope_log_fields(envelope)}
    logger.error(
        "Task %s[%s] failed for good: %s: %s",
        task.name,
        delivery.task_id,
        type(exc).__name__,
        exc,
        exc_info=exc,
        extra=fields,
    )
    # The line an operator searches for: which order, where its message went, why.
    queue = catalogue.queue_of_task(task.name)
    logger.warning(
        "order %s: %s dead-lettered to %s after %d attempts: %s: %s",
        (envelope or {}).get("aggregate_id", "?"),
        task.name,
        catalogue.dead_letter_queue(queue),
        delivery.retries + 1,
        type(exc).__name__,
        exc,
        extra=fields,
    )
    _store(task.backend.mark_as_failure, delivery.task_id, exc, request)
    metrics.consumer_messages_count(task=task.name, outcome=metrics.DEAD_LETTERED)
    metrics.dead_letter_count(queue=queue, exception=exc)
    return Outcome.REJECT


def _store(mark: Callable[..., Any], task_id: str, exc: BaseException, request: Context) -> None:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        mark(task_id, exc, traceback=tb, request=request)
    except Exception:
        # The record is the operator's help, not the guarantee: the message is rejected (or
        # retried) either way, and the DLQ keeps it.
        logger.exception("could not record the %s of task %s", type(exc).__name__, task_id)


def _meta(task: EventConsumerTask, delivery: Delivery, envelope: dict[str, Any] | None) -> dict[str, Any]:
    # Stored with the retry or failure by django-celery-results (TaskResult.meta): the dead
    # letter's details. The queue comes from the catalogue, not from the delivery's routing key,
    # which for a retry carries the delay-exchange prefix. The envelope is kept whole here
    # because task_kwargs only gets Celery's kwargsrepr (a short summary).
    return {
        "queue": catalogue.queue_of_task(task.name),
        "retries": delivery.retries,
        "envelope": envelope,
    }


def _envelope_log_fields(envelope: dict[str, Any] | None) -> dict[str, str]:
    # The envelope's own word, also for a message whose headers do not name its event (not sent
    # by the relay). It may be anything: strings only, cut short.
    return {
        field: value[:100]
        for field, name in EVENT_HEADERS.items()
        if isinstance(value := (envelope or {}).get(name), str) and value
    }


def _envelope_dict(delivery: Delivery) -> dict[str, Any] | None:
    try:
        envelope = delivery.payload()[1].get("envelope")
    except (ValueError, TypeError, AttributeError, IndexError):
        return None
    return envelope if isinstance(envelope, dict) else None
