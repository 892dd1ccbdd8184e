"""Reads over the messaging tables: event history of an order, dead-letter failure details."""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    what: str
    detail: str


def event_history(*, order_id: str) -> list[HistoryEntry]:
    """Everything the messaging layer saw for an order: events written, published, consumed."""
    entries: list[HistoryEntry] = []
    for event in OutboxEvent.objects.filter(aggregate_id=order_id):
        entries.append(HistoryEntry(event.occurred_at, f"recorded {event.event_type} v{event.version}", str(event.id)))
        if event.published_at:
            entries.append(HistoryEntry(event.published_at, f"published {event.event_type}", str(event.id)))
    for processed in ProcessedEvent.objects.filter(aggregate_id=order_id):
        entries.append(
            HistoryEntry(
                processed.processed_at, f"{processed.consumer} consumed {processed.event_type}", str(processed.event_id)
            )
        )
    for failure in dead_letters_for_order(order_id):
        entries.append(
            HistoryEntry(
                failure.date_done, f"{failure.task_name} failed for good (dead letter)", failure_summary(failure)
            )
        )
    return sorted(entries, key=lambda entry: entry.at)


def dead_letters_for_order(order_id: str) -> list[DeadLetter]:
    # meta holds the envelope (ordering/messaging/consumer.py); task_kwargs the relay's
    # kwargsrepr, which names the order too and is all a failure stored for a lost worker has.
    return list(DeadLetter.objects.filter(Q(meta__contains=order_id) | Q(task_kwargs__contains=order_id)))


def failure_summary(failure: DeadLetter) -> str:
    """'ExceptionType: message' of a stored task failure."""
    try:
        result = json.loads(failure.result or "{}")
    except ValueError:
        return failure.result or ""
    if isinstance(result, dict):
        message = result.get("exc_message", "")
        # Celery stores the exception's args: ['simulated gateway outage'] reads as the message.
        if isinstance(message, list | tuple):
            message = ", ".join(str(arg) for arg in message)
        return f"{result.get('exc_type', '?')}: {message}"
    return str(result)


@dataclass(frozen=True)
class FailureRecord:
    """What was recorded when a task failed for good: for operators' listings."""

    summary: str
    attempts: int | None
    failed_at: datetime | None


def dead_letter_failures(task_ids: Iterable[str]) -> dict[str, FailureRecord]:
    """The recorded failure of each dead-lettered task that has one, by task id (one query)."""
    ids = [task_id for task_id in task_ids if task_id]
    return {
        failure.task_id: FailureRecord(failure_summary(failure), failure_attempts(failure), failure.date_done)
        for failure in DeadLetter.objects.filter(task_id__in=ids)
    }


def failure_meta(failure: DeadLetter) -> dict:
    """What the consumer stored with its failure: queue, retries and the envelope."""
    try:
        meta = json.loads(failure.meta or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def failure_attempts(failure: DeadLetter) -> int | None:
    retries = failure_meta(failure).get("retries")
    return retries + 1 if isinstance(retries, int) else None


def dead_letter_resolved(failure: DeadLetter) -> bool:
    """A dead letter is resolved once its consumer handled the event (after a replay)."""
    event_id = dead_letter_event_id(failure)
    return bool(event_id) and ProcessedEvent.objects.filter(consumer=failure.task_name, event_id=event_id).exists()


def dead_letter_event_id(failure: DeadLetter) -> str | None:
    return (dead_letter_envelope(failure) or {}).get("event_id")


def dead_letter_envelope(failure: DeadLetter) -> dict | None:
    """The envelope the failed task was called with, as its consumer stored it."""
    envelope = failure_meta(failure).get("envelope")
    return envelope if isinstance(envelope, dict) else None


def outbox_backlog(*, older_than: timedelta) -> int:
    """Events committed more than `older_than` ago and still not published (relay or broker down)."""
    return OutboxEvent.objects.filter(published_at__isnull=True, created_at__lt=timezone.now() - older_than).count()


@dataclass(frozen=True)
class OutboxUnpublished:
    count: int
    oldest_age_seconds: float


def outbox_unpublished() -> OutboxUnpublished:
    """Events not yet published, and the age of the oldest (one query, on the unpublished rows' index)."""
    found = OutboxEvent.objects.filter(published_at__isnull=True).aggregate(count=Count("id"), oldest=Min("created_at"))
    oldest = found["oldest"]
    age = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
    return OutboxUnpublished(count=found["count"], oldest_age_seconds=age)


def dead_letters_unresolved() -> list[DeadLetter]:
    return [failure for failure in DeadLetter.objects.all() if not dead_letter_resolved(failure)]
