"""Retention: old published outbox rows, inbox rows and spent task records go, in batches; nothing else does."""

import json
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import TaskResult

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from ordering.messaging.retention import messaging_purge_expired
from tests.commands import command_output
from tests.messaging.conftest import drain
from tests.messaging.test_replay import put_dead_letter

pytestmark = pytest.mark.django_db

OLD = timedelta(days=40)  # past both defaults (outbox 7 days, inbox 30)
RECENT = timedelta(days=1)


def outbox_event(*, published_ago: timedelta | None, created_ago: timedelta = OLD) -> OutboxEvent:
    now = timezone.now()
    event = OutboxEvent.objects.create(
        event_type=catalogue.ORDER_CREATED, version=1, aggregate_id=str(uuid.uuid4()), payload={},
        occurred_at=now - created_ago, published_at=None if published_ago is None else now - published_ago,
    )  # fmt: skip
    OutboxEvent.objects.filter(pk=event.pk).update(created_at=now - created_ago)
    return event


def inbox_row(*, ago: timedelta, event_id: uuid.UUID | None = None) -> ProcessedEvent:
    row = ProcessedEvent.objects.create(
        consumer=catalogue.BILLING_HANDLE_ORDER_CREATED, event_id=event_id or uuid.uuid4(),
        event_type=catalogue.ORDER_CREATED, aggregate_id=str(uuid.uuid4()),
    )  # fmt: skip
    ProcessedEvent.objects.filter(pk=row.pk).update(processed_at=timezone.now() - ago)
    return row


def task_record(status: str, *, ago: timedelta, handled: bool = False) -> TaskResult:
    event_id = uuid.uuid4()
    record = TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=catalogue.BILLING_HANDLE_ORDER_CREATED, status=status,
        meta=json.dumps({"envelope": {"event_id": str(event_id)}}),
    )  # fmt: skip
    TaskResult.objects.filter(pk=record.pk).update(date_done=timezone.now() - ago)
    if handled:
        inbox_row(ago=ago - timedelta(hours=1), event_id=event_id)
    return record


def ids(model) -> set:
    return set(model.objects.values_list("pk", flat=True))


def test_purges_only_what_is_past_its_retention_and_done_with():
    old_published = outbox_event(published_ago=OLD)
    kept_events = {
        outbox_event(published_ago=RECENT).pk,
        outbox_event(published_ago=None).pk,  # never published: never purged, however old
    }
    old_inbox = inbox_row(ago=OLD)
    recent_inbox = inbox_row(ago=RECENT)
    old_retry = task_record("RETRY", ago=OLD)
    resolved = task_record("FAILURE", ago=OLD, handled=True)
    kept_records = {
        task_record("RETRY", ago=RECENT).pk,
        task_record("FAILURE", ago=OLD).pk,  # unresolved dead letter: never purged
        task_record("FAILURE", ago=RECENT, handled=True).pk,
    }
    assert old_published.pk not in kept_events and old_retry.pk not in kept_records

    counts = messaging_purge_expired()

    assert (counts.outbox, counts.task_results, counts.inbox, counts.unfinished) == (1, 2, 2, False)
    assert ids(OutboxEvent) == kept_events
    assert ids(TaskResult) == kept_records
    assert old_inbox.pk not in ids(ProcessedEvent)
    assert recent_inbox.pk in ids(ProcessedEvent)
    # The resolved failure's inbox row (an hour younger than it, older than the retention) went too,
    # after the record it resolved; the recent resolved failure keeps its row.
    assert not ProcessedEvent.objects.filter(event_id=json.loads(resolved.meta)["envelope"]["event_id"]).exists()
    assert ProcessedEvent.objects.count() == 2


def test_purges_in_bounded_batches_and_goes_on_next_run(settings):
    settings.RETENTION = {**settings.RETENTION, "BATCH_SIZE": 2, "MAX_BATCHES": 2}
    for _ in range(5):
        outbox_event(published_ago=OLD)
    with CaptureQueriesContext(connection) as queries:
        counts = messaging_purge_expired()
    assert (counts.outbox, counts.unfinished) == (4, True)
    deletes = [
        q["sql"] for q in queries.captured_queries if q["sql"].lstrip().startswith("DELETE FROM messaging_outboxevent")
    ]
    assert len(deletes) == 2 and all("LIMIT 2" in sql for sql in deletes)
    assert messaging_purge_expired().outbox == 1
    assert not OutboxEvent.objects.exists()


def test_inbox_rows_wait_while_task_records_are_left_to_purge(settings):
    """A resolved failure is proved by its inbox row: the row may not go before the record."""
    settings.RETENTION = {**settings.RETENTION, "BATCH_SIZE": 1, "MAX_BATCHES": 1}
    task_record("FAILURE", ago=OLD, handled=True)
    task_record("FAILURE", ago=OLD, handled=True)
    counts = messaging_purge_expired()
    assert (counts.task_results, counts.inbox, counts.unfinished) == (1, 0, True)
    assert ProcessedEvent.objects.count() == 2


def test_the_command_dry_run_counts_and_deletes_nothing():
    outbox_event(published_ago=OLD)
    inbox_row(ago=OLD)
    task_record("RETRY", ago=OLD)
    output = command_output("purge_messaging", "--dry-run")
    assert (
        "would purge 1 published outbox events, 1 task records (retries, resolved dead letters), 1 inbox rows" in output
    )
    assert (OutboxEvent.objects.count(), ProcessedEvent.objects.count(), TaskResult.objects.count()) == (1, 1, 1)
    assert "purged 1 published outbox events" in command_output("purge_messaging")
    assert not OutboxEvent.objects.exists()


def test_beat_schedules_existing_tasks_routed_to_the_declared_maintenance_queue(settings):
    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == set(catalogue.MAINTENANCE_TASKS)
    declared = {queue.name for queue in app.conf.task_queues}
    for task in scheduled:
        assert task in app.tasks
        queue = app.amqp.router.route({}, task)["queue"].name
        assert queue == catalogue.MAINTENANCE_QUEUE and queue in declared


def test_replay_refuses_a_dead_letter_older_than_the_inbox_unless_forced(broker):
    """Its consumer's inbox may have forgotten the event by then: a replay could apply it twice."""
    too_old = put_dead_letter(broker)
    recent = put_dead_letter(broker)
    for task_id, ago in ((too_old, OLD), (recent, RECENT)):
        TaskResult.objects.create(task_id=task_id, task_name=catalogue.BILLING_HANDLE_ORDER_CREATED, status="FAILURE")
        TaskResult.objects.filter(task_id=task_id).update(date_done=timezone.now() - ago)
    output = command_output("replay_dead_letters")
    assert "replayed 1, skipped 1, failed 0" in output
    assert "past the inbox's retention (use --force)" in output
    [replayed] = drain(broker, catalogue.BILLING_QUEUE)
    assert replayed.headers["id"] == recent
    assert "replayed 1, skipped 0, failed 0" in command_output("replay_dead_letters", "--force")
    assert [message.headers["id"] for message in drain(broker, catalogue.BILLING_QUEUE)] == [too_old]
