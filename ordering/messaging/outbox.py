"""The transactional outbox: models stage domain events, a signal writes them next to the change.

Nothing here talks to RabbitMQ. The row commits or rolls back with the change that caused it;
the relay (ordering/messaging/relay.py) publishes it afterwards.
"""

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.db import connection, models
from django.utils import timezone

from ordering.messaging.context import current_causation_id, current_correlation_id
from ordering.messaging.envelope import DomainEvent
from ordering.messaging.models import OutboxEvent

logger = logging.getLogger(__name__)

# Channel the relay LISTENs on. A statement trigger on the outbox table NOTIFYs it (migration
# messaging 0003), so no writer can forget to; PostgreSQL delivers a NOTIFY at commit, so the
# relay wakes exactly when there is something committed to publish.
NOTIFY_CHANNEL = "ordering_outbox"


class EventSourcedQuerySet(models.QuerySet):
    """Bulk writes send no signals, so they would change state without events: refuse them.

    Creating rows in bulk is allowed when none of them has staged an event (a payment that is
    only being opened, say): then there is nothing a signal would have written.
    """

    def update(self, **kwargs: object) -> int:
        raise TypeError(f"{self.model.__name__} emits events: change it through save()")

    def bulk_create(self, objs, *args: object, **kwargs: object) -> list:
        objs = list(objs)
        if any(obj.__dict__.get("_staged_events") for obj in objs):
            raise TypeError(f"{self.model.__name__} emits events: create one that staged events through save()")
        return super().bulk_create(objs, *args, **kwargs)

    def bulk_update(self, *args: object, **kwargs: object) -> int:
        raise TypeError(f"{self.model.__name__} emits events: change it through save()")


class EventSourcedModel(models.Model):
    """A model whose state-transition methods stage domain events for the outbox.

    The app's signals.py connects `write_staged_events` to post_save of each such model.
    """

    objects = EventSourcedQuerySet.as_manager()

    class Meta:
        abstract = True

    def stage_event(self, event: DomainEvent) -> None:
        self.__dict__.setdefault("_staged_events", []).append(event)

    def pop_staged_events(self) -> list[DomainEvent]:
        return self.__dict__.pop("_staged_events", [])


@dataclass(frozen=True)
class _Pending:
    """An event to write, with the request or event it was staged for."""

    event: DomainEvent
    correlation_id: str
    causation_id: uuid.UUID | None


# Events waiting for the end of an `outbox_collected()` block (None outside of one).
_collected: ContextVar[list[_Pending] | None] = ContextVar("outbox_collected", default=None)


def write_staged_events(sender: type, instance: EventSourcedModel, raw: bool = False, **kwargs) -> None:
    """post_save receiver: move the instance's staged events into the outbox, same transaction."""
    if raw:  # fixture loading: no domain change happened
        return
    events = instance.pop_staged_events()
    if not events:
        return
    if not connection.in_atomic_block:
        # Under autocommit the row is already committed: an outbox write now could be lost.
        raise RuntimeError(f"{sender.__name__} emitting events must be saved inside transaction.atomic()")
    pending = [_Pending(event, current_correlation_id(), current_causation_id()) for event in events]
    collected = _collected.get()
    if collected is None:
        _insert(pending)
    else:
        collected.extend(pending)


@contextmanager
def outbox_collected() -> Iterator[None]:
    """Inside a transaction: events saved in the block are written in one insert when it ends.

    For code that saves many event-emitting rows at once (a consumer's batch). The insert runs
    before the block is left, so still in the transaction; if the block fails, nothing is written
    (and the transaction rolls back anyway).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("outbox_collected() belongs inside transaction.atomic()")
    collected: list[_Pending] = []
    token = _collected.set(collected)
    try:
        yield
    finally:
        _collected.reset(token)
    _insert(collected)


# One statement for any number of events, always the same text (PostgreSQL prepares it once):
# every request and consumer that changes state writes here, so it skips the ORM's compiler.
_INSERT_SQL = f"""
    INSERT INTO {OutboxEvent._meta.db_table}
        (id, event_type, version, aggregate_id, payload, correlation_id, causation_id, occurred_at, created_at,
         publish_attempts)
    SELECT e.id, e.event_type, e.version, e.aggregate_id, e.payload::jsonb, e.correlation_id, e.causation_id,
           %s, %s, 0
      FROM unnest(%s::uuid[], %s::varchar[], %s::smallint[], %s::varchar[], %s::text[], %s::varchar[], %s::uuid[])
           AS e(id, event_type, version, aggregate_id, payload, correlation_id, causation_id)
"""


def _insert(pending: list[_Pending]) -> None:
    """Write events to the outbox in the current transaction (the relay wakes at commit).

    Each carries the correlation id of the request or event it was staged for, and that event's
    id as its cause.
    """
    if not pending:
        return
    ids = [uuid.uuid4() for _ in pending]
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                now,
                now,
                ids,
                [p.event.event_type for p in pending],
                [p.event.version for p in pending],
                [p.event.aggregate_id for p in pending],
                [json.dumps(p.event.to_payload()) for p in pending],
                [p.correlation_id for p in pending],
                [p.causation_id for p in pending],
            ],
        )
    if logger.isEnabledFor(logging.DEBUG):
        for event_id, p in zip(ids, pending, strict=True):
            logger.debug("outbox: recorded %s %s for %s", p.event.event_type, event_id, p.event.aggregate_id)


def outbox_republish(event_ids: list[uuid.UUID]) -> int:
    """Hand published events back to the relay, to be published again under the same event ids.

    For events that reached no consumer (a message lost after the broker confirmed it, a queue
    purged by hand): every consumer's inbox drops a copy it already handled. Wakes the relay at
    commit, as an insert does. Returns how many rows were handed back.
    """
    if not event_ids:
        return 0
    count = OutboxEvent.objects.filter(pk__in=event_ids, published_at__isnull=False).update(published_at=None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
    return count
