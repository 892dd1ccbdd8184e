"""Dead letters: what reaches the DLQ (and what does not), the details kept, and replay."""

import json
import uuid

import pytest
from django.utils import timezone

from billing.models import SimulatedCharge, SimulatedGatewayOutage
from ordering import catalogue
from ordering.celery import app
from ordering.messaging import selectors
from ordering.messaging.models import DeadLetter
from tests.commands import command_output
from tests.conftest import make_order
from tests.integration.conftest import RETRY_MAX, queue_depth, reconfigured, wait_for_status
from tests.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BILLING_DLQ = catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)


def dead_letter(task_id: str, timeout: float = 30) -> DeadLetter:
    wait_until(
        lambda: DeadLetter.objects.filter(task_id=task_id).exists(),
        timeout=timeout,
        message=f"a dead letter for task {task_id}",
    )
    return DeadLetter.objects.get(task_id=task_id)


def replay(*args: str) -> str:
    return command_output("replay_dead_letters", *args)


def send_poison(envelope: object) -> str:
    task_id = str(uuid.uuid4())
    app.send_task(
        catalogue.BILLING_HANDLE_ORDER_CREATED,
        kwargs={"envelope": envelope},
        task_id=task_id,
        queue=catalogue.BILLING_QUEUE,
    )
    return task_id


def test_outage_longer_than_retry_budget_is_dead_lettered_then_replayed(system, user):
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timezone.timedelta(minutes=5))
    order = make_order(user)
    failures = lambda: selectors.dead_letters_for_order(str(order.id))  # noqa: E731
    wait_until(failures, timeout=60, message="the order's task to be dead-lettered")
    failure = failures()[0]
    assert selectors.failure_summary(failure).startswith("GatewayUnavailable")
    assert selectors.failure_attempts(failure) == RETRY_MAX + 1
    assert "Traceback" in failure.traceback
    assert json.loads(failure.meta)["queue"] == catalogue.BILLING_QUEUE
    assert not selectors.dead_letter_resolved(failure)
    wait_until(lambda: queue_depth(BILLING_DLQ) >= 1, timeout=10, message="the message in the DLQ")
    assert wait_for_status(order.id, "PENDING").status == "PENDING"

    # --dry-run shows the dead letter and why it failed, and moves nothing.
    depth = queue_depth(BILLING_DLQ)
    report = replay("--dry-run", "--order", str(order.id))
    assert "would replay 1" in report
    assert "GatewayUnavailable" in report
    assert queue_depth(BILLING_DLQ) == depth

    SimulatedGatewayOutage.objects.update(until=timezone.now())
    report = replay("--order", str(order.id), "--reset-retries")
    assert "replayed 1, skipped" in report
    wait_for_status(order.id, "PROCESSED", timeout=30)
    assert SimulatedCharge.objects.filter(idempotency_key=f"order-{order.id}").count() == 1
    assert selectors.dead_letter_resolved(DeadLetter.objects.get(pk=failure.pk))


def test_task_over_its_soft_time_limit_is_retried_then_dead_lettered_not_lost(system, user):
    # Every charge takes 4 s, the soft limit is 1 s: each attempt times out inside the gateway call.
    with reconfigured(system["billing"], SIMULATED_GATEWAY_LATENCY_MS="4000", CELERY_TASK_SOFT_TIME_LIMIT="1"):
        order = make_order(user)
        wait_until(
            lambda: selectors.dead_letters_for_order(str(order.id)),
            timeout=60,
            message="the timed-out task to be dead-lettered",
        )
    [failure] = selectors.dead_letters_for_order(str(order.id))
    assert selectors.failure_summary(failure).startswith("SoftTimeLimitExceeded")
    assert selectors.failure_attempts(failure) == RETRY_MAX + 1
    assert f"order {order.id}" in replay("--dry-run", "--order", str(order.id))  # the message waits in the DLQ
    replay("--order", str(order.id), "--reset-retries")
    wait_for_status(order.id, "PROCESSED", timeout=30)
    assert SimulatedCharge.objects.filter(idempotency_key=f"order-{order.id}").count() == 1


@pytest.mark.parametrize(
    "envelope",
    [
        {"not": "an envelope"},
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "orders.order.created",
            "version": 99,
            "occurred_at": "2026-11-26T10:00:00+00:00",
            "aggregate_id": "x",
            "correlation_id": "c",
            "causation_id": None,
            "payload": {},
        },
    ],
    ids=["malformed", "unknown-version"],
)
def test_poison_message_is_dead_lettered_without_retries(system, user, envelope):
    task_id = send_poison(envelope)
    failure = dead_letter(task_id)
    assert selectors.failure_attempts(failure) == 1  # no retry of a permanent error
    assert selectors.failure_summary(failure).split(":")[0] in ("MalformedEnvelope", "UnknownEventVersion")
    # No loop: the worker goes on with the next message.
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED")
    assert system["billing"].log_text().count(f"[{task_id}] received") == 1


def test_replay_refuses_messages_replayed_too_often(system):
    task_id = send_poison({"still": "poison"})
    dead_letter(task_id)
    wait_until(lambda: queue_depth(BILLING_DLQ) >= 1, timeout=10, message="poison in the DLQ")
    # Replayed once: it fails again and returns to the DLQ, but this run does not take it again.
    report = replay("--queue", catalogue.BILLING_QUEUE, "--max-replays", "1")
    assert "replayed" in report
    wait_until(
        lambda: system["billing"].log_text().count(f"[{task_id}] received") == 2,
        timeout=20,
        message="the replayed poison to be consumed",
    )
    wait_until(lambda: _in_dlq(task_id), timeout=20, message="poison back in the DLQ")
    report = replay("--queue", catalogue.BILLING_QUEUE, "--max-replays", "1")
    assert "replayed 1 times already" in report
    assert "replayed 0," in report
    assert _in_dlq(task_id)  # skipped, not lost


def _in_dlq(task_id: str) -> bool:
    return task_id in replay("--dry-run", "--force", "--queue", catalogue.BILLING_QUEUE)


def send_raw(body: bytes, headers: dict, content_type: str = "application/json") -> None:
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange="",
            routing_key=catalogue.BILLING_QUEUE,
            headers=headers,
            content_type=content_type,
            content_encoding="utf-8",
            delivery_mode=2,
        )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        # No task header: Celery decodes it itself, fails, and would ack (drop) it.
        (b'{"secret": "4111 1111 1111 1111", ', {}),
        # A task message whose body nests too deep for the JSON decoder.
        (b"[" * 100_000 + b"]" * 100_000, {"task": catalogue.BILLING_HANDLE_ORDER_CREATED}),
        # A task this worker does not know.
        (b'[[], {"secret": "4111 1111 1111 1111"}, {}]', {"task": "billing.no_such_task"}),
    ],
    ids=["invalid json", "too deep json", "unknown task"],
)
def test_a_message_the_worker_cannot_read_is_dead_lettered_and_its_body_never_logged(system, user, body, headers):
    marker = str(uuid.uuid4())
    send_raw(body, {**headers, "id": marker})
    wait_until(lambda: _in_dlq(marker), timeout=20, message="the unreadable message in the DLQ")
    assert "4111" not in system["billing"].log_text()
    assert "[[[[" not in system["billing"].log_text()
    # The worker goes on.
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED")
