"""Reads over the messaging tables: event history of an order, dead-letter failure details."""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    Exists,
    Expression,
    ExpressionWrapper,
    JSONField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    UUIDField,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone
from django_celery_results.models import TaskResult

from ordering import catalogue
from ordering.messaging.models import DeadLetter, DeadLetterOutcome, OutboxEvent, ProcessedEvent

UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    what: str
    detail: str
    correlation_id: str = ""


def event_history(*, order_id: str, describe: Callable[[OutboxEvent], str] | None = None) -> list[HistoryEntry]:
    """Everything the messaging layer saw for an order, in time order: events written, published,
    consumed; retries, dead-lettering, and operators' replays and discards (who).

    `describe(event)`, if given, says what a recorded event means ("" for nothing to add): the
    domain's words, which this layer does not know.
    """
    entries: list[HistoryEntry] = []
    correlation: dict[str, str] = {}
    for event in OutboxEvent.objects.filter(aggregate_id=order_id):
        correlation[str(event.id)] = event.correlation_id
        meaning = describe(event) if describe is not None else ""
        entries.append(
            HistoryEntry(
                event.occurred_at,
                f"recorded {event.event_type} v{event.version}" + (f": {meaning}" if meaning else ""),
                str(event.id),
                event.correlation_id,
            )
        )
        if event.published_at:
            entries.append(
                HistoryEntry(event.published_at, f"published {event.event_type}", str(event.id), event.correlation_id)
            )
    for processed in ProcessedEvent.objects.filter(aggregate_id=order_id):
        event_id = str(processed.event_id)
        entries.append(
            HistoryEntry(
                processed.processed_at,
                f"{processed.consumer} consumed {processed.event_type}",
                event_id,
                correlation.get(event_id, ""),
            )
        )
    for record in _task_records_for_order(order_id, statuses=("RETRY", "FAILURE")):
        envelope = dead_letter_envelope(record) or {}
        attempts = failure_attempts(record)
        if record.status == "RETRY":
            what = f"{record.task_name} attempt {attempts or '?'} failed, retrying"
        else:
            what = f"{record.task_name} failed for good after {attempts or '?'} attempts (dead letter)"
        entries.append(
            HistoryEntry(record.date_done, what, failure_summary(record), envelope.get("correlation_id") or "")
        )
    for outcome in DeadLetterOutcome.objects.filter(order_id=order_id).select_related("action"):
        action = outcome.action
        detail = "; ".join(
            part for part in (outcome.detail, f"reason: {action.reason}" if action.reason else "") if part
        )
        entries.append(
            HistoryEntry(action.at, f"dead letter {outcome.result} ({action.action} by {action.actor})", detail)
        )
    return sorted(entries, key=lambda entry: entry.at)


def dead_letters_for_order(order_id: str) -> list[DeadLetter]:
    return list(DeadLetter.objects.filter(_names_order(order_id)))


def _task_records_for_order(order_id: str, *, statuses: tuple[str, ...]) -> QuerySet[TaskResult]:
    return TaskResult.objects.filter(_names_order(order_id), status__in=statuses)


def _names_order(order_id: str) -> Q:
    # meta holds the envelope (ordering/messaging/consumer.py); task_kwargs the relay's
    # kwargsrepr, which names the order too and is all a failure stored for a lost worker has.
    return Q(meta__contains=order_id) | Q(task_kwargs__contains=order_id)


def dead_letters_annotated() -> QuerySet[DeadLetter]:
    """Dead letters with what their JSON columns hold, as columns, and whether each is resolved.

    Resolved: its consumer has since handled the event (an inbox row for the task and the
    envelope's event id, e.g. after a replay), or an operator discarded it. All in SQL: meta and
    result are text columns holding JSON, cast to jsonb here.
    """
    annotated = DeadLetter.objects.annotate(
        meta_json=Cast("meta", JSONField()), result_json=Cast("result", JSONField())
    ).annotate(
        queue_name=KT("meta_json__queue"),
        exception_type=KT("result_json__exc_type"),
        event_type=KT("meta_json__envelope__event_type"),
        order_id=KT("meta_json__envelope__aggregate_id"),
        event_id_text=KT("meta_json__envelope__event_id"),
    )
    # A malformed envelope's event id is no uuid: it matches no inbox row (and breaks no cast).
    annotated = annotated.annotate(
        event_uuid=Case(When(event_id_text__regex=UUID_PATTERN, then=Cast("event_id_text", UUIDField())))
    )
    return annotated.annotate(
        handled=Exists(ProcessedEvent.objects.filter(consumer=OuterRef("task_name"), event_id=OuterRef("event_uuid"))),
        discarded=Exists(
            DeadLetterOutcome.objects.filter(task_id=OuterRef("task_id"), result=DeadLetterOutcome.Result.DISCARDED)
        ),
    ).annotate(resolved=ExpressionWrapper(Q(handled=True) | Q(discarded=True), output_field=BooleanField()))


def dead_letter_groups() -> list[dict]:
    """Unresolved dead letters by consumer queue and exception type: count and oldest, largest first."""
    return list(
        dead_letters_annotated()
        .filter(resolved=False)
        .values("queue_name", "exception_type")
        .annotate(count=Count("pk"), oldest=Min("date_done"))
        .order_by("-count", "oldest")
    )


def dead_letters_in_group(*, queue: str | None, exception_type: str | None) -> QuerySet[DeadLetter]:
    """The unresolved dead letters of one group of `dead_letter_groups` (None: the value is missing)."""
    letters = dead_letters_annotated().filter(resolved=False)
    letters = letters.filter(queue_name=queue) if queue else letters.filter(queue_name__isnull=True)
    if exception_type:
        return letters.filter(exception_type=exception_type)
    return letters.filter(exception_type__isnull=True)


def dead_letter_unresolved_exists(*, order_id: Expression | OuterRef) -> Exists:
    """An expression: the order `order_id` (e.g. an OuterRef to an order's id) has an unresolved dead letter."""
    return Exists(dead_letters_annotated().filter(resolved=False, order_id=Cast(order_id, CharField())))


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
    """A dead letter is resolved once its consumer handled the event (after a replay) or it was discarded."""
    return dead_letters_annotated().filter(pk=failure.pk, resolved=True).exists()


def dead_letter_event_id(failure: TaskResult) -> str | None:
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
    return list(dead_letters_annotated().filter(resolved=False))


@dataclass(frozen=True)
class AggregateDelivery:
    """How far the events of one aggregate (an order) got towards their consumers."""

    # An event of it waits for the relay.
    unpublished: bool = False
    # An event of it was published, or one of its tasks retried, within `recent`.
    recently_active: bool = False
    # A task failed for good on one of its events and has not handled it since (unresolved).
    dead_lettered: bool = False
    # (consumer task, event type) pairs the inbox recorded for it.
    consumed: frozenset[tuple[str, str]] = frozenset()
    # Its published events that some subscriber has not handled, oldest first.
    unconsumed: tuple[OutboxEvent, ...] = ()
    # Its events in the outbox, by type.
    recorded_types: frozenset[str] = frozenset()


def aggregate_deliveries(*, aggregate_ids: Iterable[str], recent: timedelta) -> dict[str, AggregateDelivery]:
    """Where the events of each aggregate are: outbox, inbox, retry and failure records (four queries)."""
    ids = [str(aggregate_id) for aggregate_id in aggregate_ids]
    if not ids:
        return {}
    since = timezone.now() - recent
    inbox = list(
        ProcessedEvent.objects.filter(aggregate_id__in=ids).values_list(
            "aggregate_id", "consumer", "event_type", "event_id"
        )
    )
    handled = {(consumer, str(event_id)) for _, consumer, _, event_id in inbox}
    facts = {aggregate_id: _DeliveryFacts() for aggregate_id in ids}
    for aggregate_id, consumer, event_type, _ in inbox:
        facts[aggregate_id].consumed.add((consumer, event_type))
    for event in OutboxEvent.objects.filter(aggregate_id__in=ids).order_by("created_at"):
        facts[event.aggregate_id].add_event(event, since=since, handled=handled)
    # Retries and failures name their order in the stored envelope (meta) or, for a worker lost
    # mid-task, only in the relay's kwargsrepr (task_kwargs).
    mentions = Q()
    for aggregate_id in ids:
        mentions |= Q(meta__contains=aggregate_id) | Q(task_kwargs__contains=aggregate_id)
    for record in TaskResult.objects.filter(mentions, status__in=["RETRY", "FAILURE"]):
        if (record.task_name, str(dead_letter_event_id(record))) in handled:
            continue  # handled since (resolved)
        for aggregate_id in ids:
            if aggregate_id in (record.meta or "") or aggregate_id in (record.task_kwargs or ""):
                facts[aggregate_id].add_task_record(record, since=since)
    return {aggregate_id: fact.delivery() for aggregate_id, fact in facts.items()}


@dataclass
class _DeliveryFacts:
    unpublished: bool = False
    recently_active: bool = False
    dead_lettered: bool = False
    consumed: set[tuple[str, str]] = field(default_factory=set)
    unconsumed: list[OutboxEvent] = field(default_factory=list)
    recorded_types: set[str] = field(default_factory=set)

    def add_event(self, event: OutboxEvent, *, since: datetime, handled: set[tuple[str, str]]) -> None:
        self.recorded_types.add(event.event_type)
        if event.published_at is None:
            self.unpublished = True
            return
        self.recently_active |= event.published_at >= since
        subscribers = catalogue.subscriptions_for(event.event_type)
        if any((s.task_name, str(event.id)) not in handled for s in subscribers):
            self.unconsumed.append(event)

    def add_task_record(self, record: TaskResult, *, since: datetime) -> None:
        if record.status == "FAILURE":
            self.dead_lettered = True
        elif record.date_done and record.date_done >= since:  # a retry waits in the broker
            self.recently_active = True

    def delivery(self) -> AggregateDelivery:
        return AggregateDelivery(
            unpublished=self.unpublished,
            recently_active=self.recently_active,
            dead_lettered=self.dead_lettered,
            consumed=frozenset(self.consumed),
            unconsumed=tuple(self.unconsumed),
            recorded_types=frozenset(self.recorded_types),
        )
