"""The outbox relay: publishes committed outbox events to RabbitMQ as Celery task messages.

Guarantees, and why they hold:
- an event is marked published only after RabbitMQ confirmed every message of it: the relay
  takes a batch by marking it in a transaction, publishes the batch (persistent messages,
  durable quorum queues), waits for the publisher confirms, and only then commits the mark; any
  failure rolls the mark back;
- a crash between confirm and commit republishes the event: consumers are idempotent, so a
  duplicate has no second effect;
- several relays can run: each takes its batch with FOR UPDATE SKIP LOCKED, so no two publish
  the same rows at the same time;
- it wakes on the NOTIFY that each outbox insert's commit sends (a trigger on the table), on a
  connection of its own (listen_connection_params), and sweeps every few seconds for anything left
  behind by a crash or an outage.

A batch is whatever is committed and unpublished when the relay looks, up to RELAY_BATCH_SIZE:
one event at low load, larger batches as load grows, never a wait to fill one.
"""

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery
from django.conf import settings
from django.db import connection, transaction
from django.db.backends.postgresql.base import DatabaseWrapper
from kombu import Connection

from ordering import catalogue
from ordering.messaging import metrics
from ordering.messaging.broker import connect
from ordering.messaging.context import event_headers, log_fields_of_headers
from ordering.messaging.envelope import Envelope
from ordering.messaging.models import OutboxEvent
from ordering.messaging.outbox import NOTIFY_CHANNEL
from ordering.messaging.publisher import ConfirmedPublisher, OutgoingMessage, connection_for_confirmed_batches
from ordering.messaging.topology import ensure_topology

logger = logging.getLogger(__name__)

_CLAIM_SQL = f"""
    UPDATE {OutboxEvent._meta.db_table}
       SET published_at = now(), publish_attempts = publish_attempts + 1
     WHERE id IN (SELECT id FROM {OutboxEvent._meta.db_table}
                   WHERE published_at IS NULL
                   ORDER BY created_at
                   LIMIT %s
                   FOR UPDATE SKIP LOCKED)
 RETURNING id, event_type, version, aggregate_id, correlation_id, causation_id, payload, occurred_at, created_at
"""


class BatchPacer:
    """How long the relay lets commits gather before its next batch.

    Under load (more than `busy_batches_per_second` batches in the last second), commits come
    faster than batches: waiting until `coalesce_seconds` after the previous batch lets one batch
    (one transaction, one confirm wait) take several of them. Otherwise an event is published as
    soon as it is committed, so a quiet system pays no latency for it.
    """

    def __init__(self, coalesce_seconds: float, busy_batches_per_second: int = 40) -> None:
        self.coalesce_seconds = coalesce_seconds
        self._recent: deque[float] = deque(maxlen=busy_batches_per_second)

    def pause_before_batch(self, now: float) -> float:
        """Seconds to wait before a batch starting at `now` (monotonic); records the batch."""
        busy = len(self._recent) == self._recent.maxlen and now - self._recent[0] < 1
        pause = max(0.0, self.coalesce_seconds - (now - self._recent[-1])) if busy else 0.0
        self._recent.append(now + pause)
        return pause


def task_id_for(event_id: uuid.UUID, task_name: str) -> str:
    """Deterministic: republishing an event to a subscriber reuses the same task id."""
    return str(uuid.uuid5(event_id, task_name))


def task_message(app: Celery, envelope: Envelope, task_name: str, queue: str) -> OutgoingMessage:
    """The Celery task message (protocol 2) that delivers `envelope` to the consumer task `task_name`."""
    task_id = task_id_for(envelope.event_id, task_name)
    message = app.amqp.as_task_v2(
        task_id,
        task_name,
        kwargs={"envelope": envelope.to_wire()},
        # What Flower and worker logs show for the task; also spares Celery a saferepr of the
        # whole envelope per message.
        argsrepr="()",
        kwargsrepr=f"{{envelope: {envelope.event_type} {envelope.event_id} order {envelope.aggregate_id}}}",
        ignore_result=True,
    )
    return OutgoingMessage(
        exchange=catalogue.EVENTS_EXCHANGE,
        routing_key=queue,
        body=json.dumps(message.body, separators=(",", ":")).encode(),
        headers={**message.headers, **event_headers(envelope)},
        properties={
            **message.properties,
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "delivery_mode": 2,  # persistent
            "priority": 0,
        },
    )


def event_messages(app: Celery, envelope: Envelope) -> list[OutgoingMessage]:
    """One task message per subscription of the event's type."""
    return [
        task_message(app, envelope, subscription.task_name, subscription.queue)
        for subscription in catalogue.subscriptions_for(envelope.event_type)
    ]


class OutboxRelay:
    def __init__(self, app: Celery, *, batch_size: int | None = None) -> None:
        messaging = settings.MESSAGING
        self.app = app
        self.batch_size = batch_size or messaging["RELAY_BATCH_SIZE"]
        self.sweep_seconds = messaging["RELAY_SWEEP_SECONDS"]
        self.confirm_timeout = messaging["RELAY_CONFIRM_TIMEOUT_SECONDS"]
        self.backoff_max = messaging["RELAY_ERROR_BACKOFF_MAX_SECONDS"]
        self.coalesce_seconds = messaging["RELAY_COALESCE_MS"] / 1000
        self.heartbeat = Path(messaging["RELAY_HEARTBEAT_FILE"]) if messaging["RELAY_HEARTBEAT_FILE"] else None
        self._listener: psycopg.Connection | None = None
        self._broker: Connection | None = None
        self._publisher: ConfirmedPublisher | None = None

    def publish_pending(self) -> int:
        """Publish one batch of unpublished events; returns how many were published."""
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(_CLAIM_SQL, [self.batch_size])
                rows = cursor.fetchall()
            if not rows:
                return 0
            envelopes = [_envelope(row) for row in sorted(rows, key=lambda row: row[-1])]
            messages = [message for envelope in envelopes for message in event_messages(self.app, envelope)]
            try:
                self._confirmed_publisher().publish(messages)
            except Exception:
                self._disconnect()
                raise
            # Leaving the block commits the mark: only now, after every confirm.
        metrics.events_published_count(event_types=[envelope.event_type for envelope in envelopes])
        # One line per batch, not per event (a batch holds every event committed meanwhile, up to
        # RELAY_BATCH_SIZE): each event's ids are in its `events` field, where an order is found.
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "relay: published %d events of orders %s",
                len(envelopes),
                " ".join(envelope.aggregate_id for envelope in envelopes),
                extra={"events": [log_fields_of_headers(event_headers(envelope)) for envelope in envelopes]},
            )
        return len(envelopes)

    def connect(self) -> None:
        """Connect to the broker and declare the topology (publish_pending does it when it must)."""
        self._confirmed_publisher()

    def _confirmed_publisher(self) -> ConfirmedPublisher:
        if self._publisher is None:
            broker = connection_for_confirmed_batches(self.app)
            broker.heartbeat = self.app.conf.broker_heartbeat
            connect(broker)  # any node of a cluster
            # Every (re)connection declares (or checks) the topology: the broker may have lost
            # it, and a message rejected towards a missing dead-letter exchange vanishes.
            ensure_topology(broker)
            self._broker = broker
            self._publisher = ConfirmedPublisher(broker, confirm_timeout=self.confirm_timeout)
        return self._publisher

    def _disconnect(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.release()
        self._publisher = self._broker = None

    def _heartbeat_check(self) -> None:
        if self._broker is not None:
            self._broker.heartbeat_check()

    def _listen(self) -> None:
        """LISTEN before the first sweep, so no commit between sweep and wait goes unnoticed."""
        if self._listener is None:
            self._listener = psycopg.connect(**listen_connection_params(), autocommit=True)
            self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def _wait_for_notify(self, timeout: float, stop: threading.Event) -> None:
        """Return after a NOTIFY, after `timeout` (the sweep), or soon after `stop` is set.

        Every NOTIFY already received is consumed too: the batch that follows covers all of
        their commits, and a stale one would only wake the relay for an empty batch.
        """
        deadline = time.monotonic() + timeout
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self._heartbeat_check()
            if any(True for _ in self._listener.notifies(timeout=min(left, 0.5), stop_after=1)):
                for _ in self._listener.notifies(timeout=0):
                    pass
                return

    def _close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None
        self._disconnect()
        connection.close()

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set; survive broker and database outages."""
        backoff = 0.1
        logger.info("relay: started (batch %d, sweep %.1fs)", self.batch_size, self.sweep_seconds)
        touched = 0.0
        pacer = BatchPacer(self.coalesce_seconds)
        while not stop.is_set():
            if self.heartbeat and time.monotonic() - touched >= 1:
                self.heartbeat.touch()
                touched = time.monotonic()
            try:
                self._listen()
                if pause := pacer.pause_before_batch(time.monotonic()):
                    stop.wait(pause)
                while not stop.is_set() and self.publish_pending() == self.batch_size:
                    pass
                backoff = 0.1
                self._wait_for_notify(self.sweep_seconds, stop)
            # Whatever failed (broker, database, a bug in one batch), the relay must not die:
            # nothing is marked published, so backing off and trying again loses nothing.
            except Exception as exc:
                logger.warning("relay: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
                self._close()
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        self._close()
        logger.info("relay: stopped")


def listen_connection_params() -> dict[str, Any]:
    """psycopg's parameters for the relay's LISTEN connection, built as Django builds its own.

    MESSAGING["LISTEN_DATABASE"] (DATABASE_LISTEN_URL) if set, with only its own options; else the
    default database's (the live ones: a test database too).
    """
    listen = settings.MESSAGING["LISTEN_DATABASE"]
    database = connection
    if listen is not None:
        database = DatabaseWrapper({**connection.settings_dict, "OPTIONS": {}, **listen}, alias="listen")
    params = database.get_connection_params()
    # Django's cursor class and type adapters are for its own connections; this one only listens.
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return params


def _envelope(row: tuple[Any, ...]) -> Envelope:
    event_id, event_type, version, aggregate_id, correlation_id, causation_id, payload, occurred_at, _ = row
    return Envelope(
        event_id=event_id,
        event_type=event_type,
        version=version,
        occurred_at=occurred_at if isinstance(occurred_at, datetime) else datetime.fromisoformat(occurred_at),
        aggregate_id=aggregate_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload if isinstance(payload, dict) else json.loads(payload),
    )
