"""replay_dead_letters against real RabbitMQ queues (no workers consume while these run)."""

import json
import uuid
from datetime import timedelta

import pytest
from amqp.exceptions import AccessRefused
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_results.models import TaskResult
from kombu import Producer

from ordering import catalogue
from ordering.messaging import replay as replay_module
from ordering.messaging.models import DeadLetterAction
from ordering.messaging.replay import REPLAY_COUNT_HEADER
from tests.commands import command_output
from tests.messaging.conftest import drain

pytestmark = pytest.mark.django_db

BILLING_DLQ = catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)


def put_dead_letter(
    conn,
    *,
    order_id: str | None = None,
    event_type: str = "orders.order.created",
    replays: int = 0,
    queue: str = catalogue.BILLING_QUEUE,
    origin: str | None = None,
    headers: dict | None = None,
) -> str:
    """A message as RabbitMQ dead-letters it from `queue`: Celery body and headers plus x-death.

    `origin` is the queue its x-death names (normally `queue` itself); `headers` replace or add
    headers.
    """
    origin = origin or queue
    task_id = str(uuid.uuid4())
    envelope = {"event_id": str(uuid.uuid4()), "event_type": event_type, "aggregate_id": order_id or str(uuid.uuid4())}
    message_headers = {
        "task": catalogue.BILLING_HANDLE_ORDER_CREATED,
        "id": task_id,
        "retries": 3,
        # Most recent first: the consumer queue's rejection, then the delay queue it passed through.
        "x-death": [
            {"queue": origin, "reason": "rejected", "count": 1, "exchange": "", "routing-keys": [origin]},
            {"queue": "celery_delayed_1", "reason": "expired", "count": 1, "exchange": "", "routing-keys": ["x"]},
        ],
    }
    if replays:
        message_headers[REPLAY_COUNT_HEADER] = replays
    message_headers.update(headers or {})
    Producer(conn.default_channel).publish(
        json.dumps([[], {"envelope": envelope}, {}]), exchange=catalogue.DEAD_LETTER_EXCHANGE, routing_key=queue,
        headers=message_headers, content_type="application/json", content_encoding="utf-8",
        correlation_id=task_id, priority=0,
    )  # fmt: skip
    return task_id


def replay(*args: str) -> str:
    return command_output("replay_dead_letters", *args)


def test_replay_returns_message_to_its_queue_intact(broker):
    task_id = put_dead_letter(broker)
    assert "replayed 1, skipped 0, failed 0" in replay("--reset-retries")
    assert drain(broker, BILLING_DLQ) == []
    [message] = drain(broker, catalogue.BILLING_QUEUE)
    assert message.headers["id"] == task_id
    assert message.headers["task"] == catalogue.BILLING_HANDLE_ORDER_CREATED
    assert message.headers[REPLAY_COUNT_HEADER] == 1
    assert message.headers["retries"] == 0
    assert message.headers["x-death"][0]["queue"] == catalogue.BILLING_QUEUE
    assert message.properties["correlation_id"] == task_id
    assert message.content_type == "application/json"
    assert message.decode()[1]["envelope"]["event_type"] == "orders.order.created"


def test_dry_run_moves_nothing(broker):
    put_dead_letter(broker)
    put_dead_letter(broker)
    assert "would replay 2" in replay("--dry-run")
    assert len(drain(broker, BILLING_DLQ)) == 2
    assert drain(broker, catalogue.BILLING_QUEUE) == []


def test_filters_and_limit_leave_the_rest_in_the_dlq(broker):
    wanted = str(uuid.uuid4())
    put_dead_letter(broker, order_id=wanted)
    put_dead_letter(broker)
    put_dead_letter(broker, event_type="other.type")
    assert "replayed 1, skipped 2" in replay("--order", wanted)
    assert "replayed 1," in replay("--event-type", "orders.order.created", "--limit", "1")
    [left] = drain(broker, BILLING_DLQ)
    assert left.decode()[1]["envelope"]["event_type"] == "other.type"
    assert len(drain(broker, catalogue.BILLING_QUEUE)) == 2


def test_too_often_replayed_messages_need_force(broker):
    put_dead_letter(broker, replays=3)
    assert "replayed 0, skipped 1" in replay("--max-replays", "3")
    assert "replayed 1, skipped 0" in replay("--max-replays", "3", "--force")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({REPLAY_COUNT_HEADER: "many"}, "x-replay-count is not a number"),
        ({"x-death": "rejected"}, "malformed x-death header"),
        ({"x-death": ["billing.events"]}, "malformed x-death header"),
    ],
)
def test_a_dead_letter_with_headers_that_make_no_sense_is_skipped_with_its_reason(broker, headers, reason):
    bad = put_dead_letter(broker, headers=headers)
    good = put_dead_letter(broker)
    report = replay()
    assert "replayed 1, skipped 1, failed 0" in report
    assert reason in report
    assert [m.headers["id"] for m in drain(broker, BILLING_DLQ)] == [bad]
    assert [m.headers["id"] for m in drain(broker, catalogue.BILLING_QUEUE)] == [good]


def test_a_negative_replay_count_counts_as_zero_and_cannot_defeat_max_replays(broker):
    put_dead_letter(broker, headers={REPLAY_COUNT_HEADER: -100})
    assert "replayed 1," in replay("--max-replays", "1")
    [message] = drain(broker, catalogue.BILLING_QUEUE)
    assert message.headers[REPLAY_COUNT_HEADER] == 1


def test_failed_republish_leaves_the_dead_letter_in_place(broker, monkeypatch):
    put_dead_letter(broker)

    def broken(*args, **kwargs):
        raise ConnectionError("broker went away mid-replay")

    monkeypatch.setattr(replay_module, "_publish", broken)
    with pytest.raises(CommandError, match="could not be replayed"):
        replay()
    assert len(drain(broker, BILLING_DLQ)) == 1
    assert drain(broker, catalogue.BILLING_QUEUE) == []


def test_replay_handles_only_messages_present_at_start(broker, monkeypatch):
    """A message dead-lettered again during the run is not taken a second time."""
    put_dead_letter(broker)
    original = replay_module._publish

    def republish_and_fail_again(publisher, messages):
        original(publisher, messages)
        put_dead_letter(broker)  # the consumer rejected it again at once

    monkeypatch.setattr(replay_module, "_publish", republish_and_fail_again)
    assert "replayed 1, skipped 0" in replay()
    assert len(drain(broker, BILLING_DLQ)) == 1


def test_dead_letters_go_back_in_batches_with_one_confirm_wait_each(broker, monkeypatch):
    for _ in range(replay_module.REPLAY_BATCH_SIZE + 50):
        put_dead_letter(broker)
    batches = []
    original = replay_module._publish

    def counting(publisher, messages):
        batches.append(len(messages))
        original(publisher, messages)

    monkeypatch.setattr(replay_module, "_publish", counting)
    assert f"replayed {replay_module.REPLAY_BATCH_SIZE + 50}, skipped 0, failed 0" in replay()
    assert batches == [replay_module.REPLAY_BATCH_SIZE, 50]
    assert drain(broker, BILLING_DLQ) == []
    assert len(drain(broker, catalogue.BILLING_QUEUE)) == replay_module.REPLAY_BATCH_SIZE + 50


def test_one_message_that_cannot_go_back_fails_alone(broker, monkeypatch):
    put_dead_letter(broker)
    put_dead_letter(broker, origin=catalogue.ORDERS_QUEUE)  # its way back is gone
    put_dead_letter(broker)
    monkeypatch.setattr(replay_module, "ensure_topology", lambda connection: None)
    broker.default_channel.queue_delete(catalogue.ORDERS_QUEUE)
    with pytest.raises(CommandError, match="1 dead letters could not be replayed"):
        replay("--queue", catalogue.BILLING_QUEUE)
    assert len(drain(broker, catalogue.BILLING_QUEUE)) == 2
    [left] = drain(broker, BILLING_DLQ)
    assert left.headers["x-death"][0]["queue"] == catalogue.ORDERS_QUEUE


def test_replay_to_a_missing_queue_keeps_the_dead_letter(broker, monkeypatch):
    put_dead_letter(broker)
    monkeypatch.setattr(replay_module, "ensure_topology", lambda connection: None)
    broker.default_channel.queue_delete(catalogue.BILLING_QUEUE)
    with pytest.raises(CommandError, match="could not be replayed"):
        replay()
    assert len(drain(broker, BILLING_DLQ)) == 1


def test_dry_run_lists_each_dead_letter_readably_with_a_summary_by_cause(broker):
    order_id = str(uuid.uuid4())
    task_id = put_dead_letter(broker, order_id=order_id)
    TaskResult.objects.create(
        task_id=task_id, task_name=catalogue.BILLING_HANDLE_ORDER_CREATED, status="FAILURE",
        result=json.dumps({"exc_type": "GatewayUnavailable", "exc_message": ["simulated gateway outage"]}),
        meta=json.dumps({"queue": catalogue.BILLING_QUEUE, "retries": 5}),
    )  # fmt: skip
    # date_done is set on save (auto_now): age the record afterwards.
    TaskResult.objects.filter(task_id=task_id).update(date_done=timezone.now() - timedelta(minutes=12, seconds=5))
    put_dead_letter(broker)
    report = replay("--dry-run")
    assert "GatewayUnavailable: simulated gateway outage; 6 attempts, failed " in report
    assert "(12 min ago)" in report
    assert "['" not in report
    assert max(len(line) for line in report.splitlines()) <= 120
    assert f"order {order_id}" in report
    assert "by cause:" in report
    assert "would replay 2, skipped 0, failed 0" in report


def test_json_output_carries_every_dead_letter_and_the_counts(broker):
    task_id = put_dead_letter(broker)
    document = json.loads(replay("--dry-run", "--json"))
    assert document["counts"] == {"would_replay": 1, "skipped": 0, "failed": 0}
    [row] = document["dead_letters"]
    assert (row["task_id"], row["action"], row["origin_queue"]) == (task_id, "would replay", catalogue.BILLING_QUEUE)


def test_task_ids_replay_only_those_letters_and_others_are_neither_touched_nor_reported(broker):
    wanted, other = put_dead_letter(broker), put_dead_letter(broker)
    summary, action = replay_module.dead_letters_replay(
        criteria=replay_module.ReplayCriteria(task_ids=frozenset({wanted})), actor="test", reason="why"
    )
    assert [letter.task_id for letter in summary.replayed] == [wanted]
    assert summary.skipped == []
    assert [message.headers["id"] for message in drain(broker, catalogue.BILLING_QUEUE)] == [wanted]
    assert [message.headers["id"] for message in drain(broker, BILLING_DLQ)] == [other]
    assert (action.action, action.replayed, action.skipped, action.reason) == ("replay", 1, 0, "why")
    assert action.criteria["task_ids"] == [wanted]


def test_discard_takes_the_letters_from_the_dlq_without_republishing_and_needs_a_reason(broker):
    # A malformed one can be discarded too (it can never be replayed).
    doomed = put_dead_letter(broker, headers={"x-death": "garbage"})
    kept = put_dead_letter(broker)
    criteria = replay_module.ReplayCriteria(task_ids=frozenset({doomed}))
    with pytest.raises(ValueError, match="reason"):
        replay_module.dead_letters_discard(criteria=criteria, actor="test", reason=" ")
    summary, action = replay_module.dead_letters_discard(criteria=criteria, actor="test", reason="poison")
    assert [letter.task_id for letter in summary.discarded] == [doomed]
    assert [message.headers["id"] for message in drain(broker, BILLING_DLQ)] == [kept]
    assert drain(broker, catalogue.BILLING_QUEUE) == []
    assert list(action.outcomes.values_list("task_id", "result")) == [(doomed, "discarded")]


def test_the_command_is_audited_with_what_it_did_and_a_dry_run_is_not(broker):
    task_id = put_dead_letter(broker, replays=5)
    replay("--dry-run")
    assert not DeadLetterAction.objects.exists()
    replay("--reason", "gateway fixed")
    action = DeadLetterAction.objects.get()
    assert action.actor.startswith("replay_dead_letters")
    assert (action.action, action.replayed, action.skipped, action.reason) == ("replay", 0, 1, "gateway fixed")
    assert list(action.outcomes.values_list("task_id", "result")) == [(task_id, "skipped")]


def test_a_replay_the_broker_refuses_is_recorded_with_the_error(broker, settings):
    settings.MESSAGING = {**settings.MESSAGING, "REPLAY_BROKER_URL": "amqp://nobody:wrong@127.0.0.1:5672//"}
    with pytest.raises(AccessRefused):
        replay_module.dead_letters_replay(criteria=replay_module.ReplayCriteria(), actor="test")
    assert "AccessRefused" in DeadLetterAction.objects.get().error
