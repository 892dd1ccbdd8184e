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


def test_stuck_order_unpublished_event_and_dead_letter_fail_the_check(user):
    order = make_order(user)
    with connection.cursor() as cursor:  # Order refuses queryset updates: age it in SQL
        cursor.execute("UPDATE orders_order SET created_at = %s", [timezone.now() - timedelta(minutes=10)])
    OutboxEvent.objects.update(created_at=timezone.now() - timedelta(minutes=10))
    TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name="billing.handle_order_created", status="FAILURE",
        meta=json.dumps({"envelope": {"event_id": str(uuid.uuid4()), "aggregate_id": str(order.id)}}),
        result=json.dumps({"exc_type": "GatewayUnavailable", "exc_message": ["down"]}),
    )  # fmt: skip
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("check_pipeline", stdout=out)
    report = out.getvalue()
    assert "orders pending > 5 min: 1" in report
    assert str(order.id) in report
    assert "outbox events unpublished > 60 s: 1" in report
    assert "unresolved dead letters: 1" in report
    assert "GatewayUnavailable" in report
