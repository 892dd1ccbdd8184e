"""The outbox relay: publishes committed outbox events to RabbitMQ as Celery task messages.

Guarantees, and why they hold:
- an event is marked published only after RabbitMQ confirmed every message of it (publisher
  confirms, persistent messages, durable quorum queues);
- a crash between confirm and mark republishes the event: consumers are idempotent, so a
  duplicate has no second effect;
- several relays can run: each takes its batch with SELECT ... FOR UPDATE SKIP LOCKED, so no
  two publish the same rows at the same time;
- it wakes on the NOTIFY sent by each outbox write's commit, and sweeps every few seconds for
  anything left behind by a crash or an outage.
"""

import contextlib
import logging
import threading
import time
import uuid
from pathlib import Path

import psycopg
from celery import Celery
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from ordering.messaging.outbox import NOTIFY_CHANNEL
from ordering.messaging.topology import declare_topology

logger = logging.getLogger(__name__)


def task_id_for(event_id: uuid.UUID, task_name: str) -> str:
    """Deterministic: republishing an event to a subscriber reuses the same task id."""
    return str(uuid.uuid5(event_id, task_name))


class OutboxRelay:
    def __init__(self, app: Celery, *, batch_size: int | None = None) -> None:
        messaging = settings.MESSAGING
        self.app = app
        self.batch_size = batch_size or messaging["RELAY_BATCH_SIZE"]
        self.sweep_seconds = messaging["RELAY_SWEEP_SECONDS"]
        self.confirm_timeout = messaging["RELAY_CONFIRM_TIMEOUT_SECONDS"]
        self.backoff_max = messaging["RELAY_ERROR_BACKOFF_MAX_SECONDS"]
        self.heartbeat = Path(messaging["RELAY_HEARTBEAT_FILE"]) if messaging["RELAY_HEARTBEAT_FILE"] else None
        self._listener: psycopg.Connection | None = None
        self._topology_declared = False

    def publish_pending(self) -> int:
        """Publish one batch of unpublished events; returns how many were published."""
        self._ensure_topology()
        with transaction.atomic():
            events = list(
                OutboxEvent.objects.select_for_update(skip_locked=True)
                .filter(published_at__isnull=True)
                .order_by("created_at")[: self.batch_size]
            )
            if not events:
                return 0
            try:
                with self.app.producer_or_acquire() as producer:
                    for event in events:
                        self._publish(producer, event)
            except Exception:
                self._topology_declared = False
                raise
            OutboxEvent.objects.filter(pk__in=[e.pk for e in events]).update(
                published_at=timezone.now(), publish_attempts=F("publish_attempts") + 1
            )
        return len(events)

    def _publish(self, producer, event: OutboxEvent) -> None:
        envelope = event.envelope().to_wire()
        for subscription in catalogue.subscriptions_for(event.event_type):
            # send_task returns once RabbitMQ confirmed (confirm_publish) or raises.
            self.app.send_task(
                subscription.task_name,
                kwargs={"envelope": envelope},
                task_id=task_id_for(event.id, subscription.task_name),
                queue=subscription.queue,
                producer=producer,
                headers={"event_id": str(event.id), "event_type": event.event_type},
                # What Flower and worker logs show for the task; also spares Celery a saferepr
                # of the whole envelope per message.
                argsrepr="()",
                kwargsrepr=f"{{envelope: {event.event_type} {event.id} order {event.aggregate_id}}}",
                # Unroutable (a queue deleted under us) must fail, not be confirmed and dropped:
                # the broker returns a mandatory message, py-amqp raises, nothing is marked.
                mandatory=True,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                confirm_timeout=self.confirm_timeout,
            )
        logger.info("relay: published %s %s", event.event_type, event.id)

    def _ensure_topology(self) -> None:
        if not self._topology_declared:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                declare_topology(conn)
            self._topology_declared = True

    def _listen(self) -> None:
        """LISTEN before the first sweep, so no commit between sweep and wait goes unnoticed."""
        if self._listener is None:
            params = connection.get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            self._listener = psycopg.connect(**params, autocommit=True)
            self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def _wait_for_notify(self, timeout: float, stop: threading.Event) -> None:
        """Return on the first NOTIFY, after `timeout` (the sweep), or soon after `stop` is set."""
        deadline = time.monotonic() + timeout
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            for _ in self._listener.notifies(timeout=min(left, 0.5), stop_after=1):
                return

    def _close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None
        connection.close()

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop` is set; survive broker and database outages."""
        backoff = 0.1
        logger.info("relay: started (batch %d, sweep %.1fs)", self.batch_size, self.sweep_seconds)
        while not stop.is_set():
            if self.heartbeat:
                self.heartbeat.touch()
            try:
                self._listen()
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
