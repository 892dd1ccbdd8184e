"""Retention: delete what the messaging tables no longer need, in bounded batches.

- published outbox rows older than RETENTION["OUTBOX_DAYS"] (the relay is done with them);
- retry records, and failure records of dead letters since handled (resolved), older than
  RETENTION["INBOX_DAYS"];
- inbox rows older than RETENTION["INBOX_DAYS"], after those records: a failure is resolved by its
  inbox row, so it must go first, or it would read as unresolved again.

Never: an unpublished outbox row (not delivered yet) or an unresolved dead letter's record (an
operator's to-do). Each batch is one short DELETE in its own transaction (SKIP LOCKED: a relay or
a consumer holding a row is not waited for), at most RETENTION["MAX_BATCHES"] per table and run;
the next run goes on where this one stopped.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from ordering.messaging.models import OutboxEvent, ProcessedEvent
from ordering.messaging.selectors import dead_letter_event_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeCounts:
    """Rows deleted (or, in a dry run, that would be) per kind."""

    outbox: int
    task_results: int
    inbox: int
    # A table had more than MAX_BATCHES batches to delete: the next run goes on.
    unfinished: bool = False


def messaging_purge_expired(*, dry_run: bool = False) -> PurgeCounts:
    retention = settings.RETENTION
    now = timezone.now()
    outbox_before = now - timedelta(days=retention["OUTBOX_DAYS"])
    inbox_before = now - timedelta(days=retention["INBOX_DAYS"])
    if dry_run:
        return PurgeCounts(
            outbox=_expired_outbox(outbox_before).count(),
            task_results=len(_expired_task_results(inbox_before, after_pk=0, limit=None)),
            inbox=_expired_inbox(inbox_before).count(),
        )
    outbox, outbox_done = _in_batches(lambda size: _delete_batch(_OUTBOX_SQL, [outbox_before, size]))
    task_results, results_done = _purge_task_results(inbox_before)
    inbox, inbox_done = 0, True
    if results_done:  # else some resolved failures still need their inbox rows to prove it
        inbox, inbox_done = _in_batches(lambda size: _delete_batch(_INBOX_SQL, [inbox_before, size]))
    counts = PurgeCounts(outbox, task_results, inbox, unfinished=not (outbox_done and results_done and inbox_done))
    logger.info(
        "retention: purged %d outbox events, %d task records, %d inbox rows%s",
        outbox,
        task_results,
        inbox,
        " (more next run)" if counts.unfinished else "",
    )
    return counts


def _expired_outbox(before: datetime):
    return OutboxEvent.objects.filter(published_at__isnull=False, published_at__lt=before)


def _expired_inbox(before: datetime):
    return ProcessedEvent.objects.filter(processed_at__lt=before)


_OUTBOX_TABLE = OutboxEvent._meta.db_table
_INBOX_TABLE = ProcessedEvent._meta.db_table
# published_at < %s is false for an unpublished row (NULL): those are never selected.
_OUTBOX_SQL = f"""
    DELETE FROM {_OUTBOX_TABLE} WHERE id IN (
        SELECT id FROM {_OUTBOX_TABLE} WHERE published_at < %s LIMIT %s FOR UPDATE SKIP LOCKED)
"""
_INBOX_SQL = f"""
    DELETE FROM {_INBOX_TABLE} WHERE id IN (
        SELECT id FROM {_INBOX_TABLE} WHERE processed_at < %s LIMIT %s FOR UPDATE SKIP LOCKED)
"""


def _delete_batch(sql: str, params: list) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _in_batches(delete: Callable[[int], int]) -> tuple[int, bool]:
    """Call `delete(batch_size)` until a batch comes back short or MAX_BATCHES ran: (deleted, finished)."""
    size = settings.RETENTION["BATCH_SIZE"]
    deleted = 0
    for _ in range(settings.RETENTION["MAX_BATCHES"]):
        count = delete(size)
        deleted += count
        if count < size:
            return deleted, True
    return deleted, False


def _purge_task_results(before: datetime) -> tuple[int, bool]:
    """Expired retry records and resolved failure records, a batch of candidates at a time (by id)."""
    size = settings.RETENTION["BATCH_SIZE"]
    deleted, after_pk = 0, 0
    for _ in range(settings.RETENTION["MAX_BATCHES"]):
        candidates = list(
            TaskResult.objects.filter(status__in=["RETRY", "FAILURE"], date_done__lt=before, pk__gt=after_pk)
            .order_by("pk")
            .only("pk", "status", "task_name", "meta")[:size]
        )
        if not candidates:
            return deleted, True
        after_pk = candidates[-1].pk
        expired = _purgeable(candidates)
        with transaction.atomic():
            deleted += TaskResult.objects.filter(pk__in=[record.pk for record in expired]).delete()[0]
        if len(candidates) < size:
            return deleted, True
    return deleted, False


def _expired_task_results(before: datetime, *, after_pk: int, limit: int | None) -> list[TaskResult]:
    records = TaskResult.objects.filter(status__in=["RETRY", "FAILURE"], date_done__lt=before, pk__gt=after_pk)
    return _purgeable(list(records.only("pk", "status", "task_name", "meta")[:limit]))


def _purgeable(records: list[TaskResult]) -> list[TaskResult]:
    """Retry records, and failure records whose consumer has handled the event since (one query)."""
    failures = {record.pk: dead_letter_event_id(record) for record in records if record.status == "FAILURE"}
    handled = set(
        ProcessedEvent.objects.filter(
            event_id__in=[event_id for event_id in failures.values() if _is_uuid(event_id)]
        ).values_list("consumer", "event_id")
    )
    handled = {(consumer, str(event_id)) for consumer, event_id in handled}
    return [
        record
        for record in records
        if record.status == "RETRY" or (record.task_name, str(failures[record.pk])) in handled
    ]


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
