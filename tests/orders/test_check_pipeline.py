"""check_pipeline: an order stuck in PENDING is never silent."""

import io
import json
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from ordering.messaging.models import OutboxEvent
from tests.commands import command_output
from tests.conftest import make_order

pytestmark = pytest.mark.django_db


def check(*args: str) -> str:
    return command_output("check_pipeline", *args)


def test_healthy_pipeline_passes(user):
    make_order(user)  # fresh: not stuck yet
    OutboxEvent.objects.update(published_at=timezone.now())
    assert "pipeline healthy" in check()


def test_stuck_orders_with_their_state_unpublished_events_and_dead_letters_by_order_fail_the_check(user):
    waiting, dead_lettered, missing = make_order(user), make_order(user), make_order(user)
    with connection.cursor() as cursor:  # Order refuses queryset updates: age it in SQL
        cursor.execute("UPDATE orders_order SET created_at = %s", [timezone.now() - timedelta(minutes=10)])
    OutboxEvent.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    OutboxEvent.objects.filter(aggregate_id=str(dead_lettered.id)).update(published_at=timezone.now())
    OutboxEvent.objects.filter(aggregate_id=str(missing.id)).delete()
    TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name="billing.handle_order_created", status="FAILURE",
        meta=json.dumps({"envelope": {"event_id": str(uuid.uuid4()), "aggregate_id": str(dead_lettered.id)}}),
        result=json.dumps({"exc_type": "GatewayUnavailable", "exc_message": ["down"]}),
    )  # fmt: skip
    # A worker lost mid-task leaves only the relay's summary of the message, which names the order.
    lost = str(uuid.uuid4())
    TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name="billing.handle_order_created", status="FAILURE",
        task_kwargs=f"{{envelope: orders.order.created {uuid.uuid4()} order {lost}}}",
        result=json.dumps({"exc_type": "WorkerLostError", "exc_message": ["lost"]}),
    )  # fmt: skip
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("check_pipeline", stdout=out)
    report = out.getvalue()
    assert "orders pending or canceling > 5 min: 3 (in flight 1, dead-lettered 1, missing 1)" in report
    assert f"order {waiting.id}  pending 10 min  in flight: an event waits for the relay" in report
    assert f"order {dead_lettered.id}  pending 10 min  dead-lettered: an unresolved dead letter" in report
    assert f"order {missing.id}  pending 10 min  missing: no order_created event in the outbox" in report
    assert "outbox events unpublished > 60 s: 1" in report
    assert "unresolved dead letters: 2" in report
    assert f"order {dead_lettered.id}  billing.handle_order_created[" in report
    assert "GatewayUnavailable: down" in report
    assert f"order {lost}  billing.handle_order_created[" in report
