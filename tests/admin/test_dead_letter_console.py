"""The operator's console in the admin: dead-letter groups and filters, replay and discard (against the real
RabbitMQ test vhost), permissions, CSRF, the audit, the order page's replay button, read-only pages."""

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from django_celery_results.models import TaskResult
from kombu import Producer

from ordering import catalogue
from ordering.messaging.models import DeadLetter, DeadLetterAction, DeadLetterOutcome, OutboxEvent, ProcessedEvent
from ordering.messaging.replay import REPLAY_COUNT_HEADER
from tests.conftest import make_order
from tests.messaging.conftest import drain

pytestmark = pytest.mark.django_db

BILLING_DLQ = catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)
ORDERS_DLQ = catalogue.dead_letter_queue(catalogue.ORDERS_QUEUE)
CHANGELIST = "/admin/messaging/deadletter/"
GROUP_REPLAY = "/admin/messaging/deadletter/replay-group/"


def dead_letter(
    broker=None,
    *,
    order_id: str | None = None,
    exc_type: str = "GatewayUnavailable",
    queue: str = catalogue.BILLING_QUEUE,
    event_type: str = "orders.order.created",
    age: timedelta = timedelta(minutes=3),
) -> DeadLetter:
    """A failure as the consumer records it and, given a broker, its message waiting in the queue's DLQ."""
    task_id = str(uuid.uuid4())
    task_name = catalogue.BILLING_HANDLE_ORDER_CREATED if queue == catalogue.BILLING_QUEUE else "orders.handle_x"
    envelope = {
        "event_id": str(uuid.uuid4()), "event_type": event_type, "aggregate_id": order_id or str(uuid.uuid4()),
        "correlation_id": "corr-1",
    }  # fmt: skip
    TaskResult.objects.create(
        task_id=task_id, task_name=task_name, status="FAILURE", task_kwargs="{envelope: ...}",
        result=json.dumps({"exc_type": exc_type, "exc_message": ["it failed"]}),
        traceback="Traceback (most recent call last):\n  File ...\nGatewayUnavailable: it failed",
        meta=json.dumps({"queue": queue, "retries": 5, "envelope": envelope}),
    )  # fmt: skip
    # date_done is set on save (auto_now): age the record afterwards.
    TaskResult.objects.filter(task_id=task_id).update(date_done=timezone.now() - age)
    if broker is not None:
        Producer(broker.default_channel).publish(
            json.dumps([[], {"envelope": envelope}, {}]), exchange=catalogue.DEAD_LETTER_EXCHANGE, routing_key=queue,
            headers={
                "task": task_name, "id": task_id, "retries": 5,
                "x-death": [{"queue": queue, "reason": "rejected", "count": 1, "routing-keys": [queue]}],
            },
            content_type="application/json", content_encoding="utf-8", correlation_id=task_id,
        )  # fmt: skip
    return DeadLetter.objects.get(task_id=task_id)


def task_ids(messages) -> set[str]:
    return {message.headers["id"] for message in messages}


def staff(*permissions: str, is_staff: bool = True) -> Client:
    user = get_user_model().objects.create_user(username=f"staff-{uuid.uuid4().hex[:6]}", is_staff=is_staff)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator() -> Client:
    return staff("view_deadletter", "replay_deadletter", "discard_deadletter", "view_order", "view_deadletteraction")


def select(action: str, *letters: DeadLetter, **extra: str) -> dict:
    return {"action": action, "_selected_action": [letter.pk for letter in letters], **extra}


# --- the list --------------------------------------------------------------------------------------


def test_the_list_shows_groups_by_queue_and_exception_with_count_and_oldest(operator):
    for _ in range(2):
        dead_letter(exc_type="GatewayUnavailable", age=timedelta(hours=3))
    dead_letter(exc_type="SoftTimeLimitExceeded", queue=catalogue.ORDERS_QUEUE)
    page = operator.get(CHANGELIST).content.decode()
    groups = page[page.index('id="dead-letter-groups"') : page.index('id="changelist"')]
    assert "GatewayUnavailable" in groups and "SoftTimeLimitExceeded" in groups
    assert '?resolved=no&amp;queue=billing.events&amp;exception=GatewayUnavailable">2</a>' in groups
    assert "3\xa0hours ago" in groups
    assert "replay-group/?resolved=no&amp;queue=billing.events&amp;exception=GatewayUnavailable" in groups


def test_resolved_means_handled_since_or_discarded_and_is_filtered_in_sql(operator, django_assert_max_num_queries):
    handled = dead_letter()
    envelope = json.loads(handled.meta)["envelope"]
    ProcessedEvent.objects.create(
        consumer=handled.task_name, event_id=envelope["event_id"], event_type="x", aggregate_id="y"
    )
    discarded = dead_letter()
    action = DeadLetterAction.objects.create(actor="ops", action="discard", reason="test order")
    DeadLetterOutcome.objects.create(action=action, task_id=discarded.task_id, result="discarded")
    waiting = dead_letter()
    unresolved = operator.get(CHANGELIST, {"resolved": "no"}).content.decode()
    resolved = operator.get(CHANGELIST, {"resolved": "yes"}).content.decode()
    assert json.loads(waiting.meta)["envelope"]["aggregate_id"] in unresolved
    for letter in (handled, discarded):
        order_id = json.loads(letter.meta)["envelope"]["aggregate_id"]
        assert order_id not in unresolved
        assert order_id in resolved
    assert json.loads(waiting.meta)["envelope"]["aggregate_id"] not in resolved
    # The number of queries does not grow with the number of dead letters (no Python loop over rows).
    for _ in range(20):
        dead_letter()
    with django_assert_max_num_queries(20):
        operator.get(CHANGELIST, {"resolved": "no"})


@pytest.mark.parametrize(
    ("params", "shown", "hidden"),
    [
        ({"queue": catalogue.ORDERS_QUEUE}, "orders-one", "billing-one"),
        ({"exception": "SoftTimeLimitExceeded"}, "orders-one", "billing-one"),
        ({"event_type": "billing.payment.captured"}, "orders-one", "billing-one"),
        ({"age": "1h"}, "billing-one", "orders-one"),
        ({"age": "1d"}, "orders-one", "billing-one"),
    ],
)
def test_filters_by_queue_exception_event_type_and_age(operator, params, shown, hidden):
    ids = {"billing-one": str(uuid.uuid4()), "orders-one": str(uuid.uuid4())}
    dead_letter(order_id=ids["billing-one"], age=timedelta(minutes=5))
    dead_letter(
        order_id=ids["orders-one"], queue=catalogue.ORDERS_QUEUE, exc_type="SoftTimeLimitExceeded",
        event_type="billing.payment.captured", age=timedelta(hours=2),
    )  # fmt: skip
    page = operator.get(CHANGELIST, params).content.decode()
    assert ids[shown] in page
    assert ids[hidden] not in page


def test_a_dead_letters_page_is_readable_and_links_its_order(operator, user):
    order = make_order(user)
    letter = dead_letter(order_id=str(order.id))
    page = operator.get(f"{CHANGELIST}{letter.pk}/change/").content.decode()
    assert f"{catalogue.BILLING_HANDLE_ORDER_CREATED} for order {order.id}, failed" in page
    assert "TaskResult object" not in page
    assert f'href="/admin/orders/order/{order.id}/change/"' in page
    assert "<pre>Traceback (most recent call last):" in page
    assert "GatewayUnavailable: it failed" in page
    assert "Original queue" in page and catalogue.BILLING_QUEUE in page
    assert "&quot;event_type&quot;: &quot;orders.order.created&quot;" in page  # the payload, escaped
    assert 'name="_save"' not in page


# --- replay and discard ----------------------------------------------------------------------------


def test_replay_action_confirms_then_replays_the_selected_letters_and_records_it(broker, operator):
    chosen, other = dead_letter(broker), dead_letter(broker)
    confirmation = operator.post(CHANGELIST, select("replay_selected", chosen))
    assert confirmation.status_code == 200
    assert "Replay these 1 dead letter?" in confirmation.content.decode()
    assert len(drain(broker, catalogue.BILLING_QUEUE)) == 0  # nothing moved before confirming

    response = operator.post(
        CHANGELIST, select("replay_selected", chosen, confirm="yes", reason="gateway back", reset_retries="on"),
        follow=True,
    )  # fmt: skip
    assert "Replayed 1 dead letter." in response.content.decode()
    [replayed] = drain(broker, catalogue.BILLING_QUEUE)
    assert replayed.headers["id"] == chosen.task_id
    assert replayed.headers[REPLAY_COUNT_HEADER] == 1
    assert replayed.headers["retries"] == 0
    assert task_ids(drain(broker, BILLING_DLQ)) == {other.task_id}
    action = DeadLetterAction.objects.get()
    assert (action.action, action.reason, action.replayed, action.skipped, action.failed) == (
        "replay", "gateway back", 1, 0, 0,
    )  # fmt: skip
    assert action.user is not None and action.actor == action.user.username
    assert list(action.outcomes.values_list("task_id", "result")) == [(chosen.task_id, "replayed")]


def test_replay_of_a_letter_replayed_too_often_is_skipped_and_said_so(broker, operator, settings):
    settings.MESSAGING = {**settings.MESSAGING, "REPLAY_MAX_REPLAYS": 0}
    letter = dead_letter(broker)
    response = operator.post(CHANGELIST, select("replay_selected", letter, confirm="yes"), follow=True)
    assert "replayed 0 times already" in response.content.decode()
    assert task_ids(drain(broker, BILLING_DLQ)) == {letter.task_id}
    action = DeadLetterAction.objects.get()
    assert (action.replayed, action.skipped) == (0, 1)
    assert action.outcomes.get().detail.startswith("replayed 0 times already")


def test_discard_needs_a_reason_then_removes_the_message_and_resolves_the_letter(broker, operator):
    letter, kept = dead_letter(broker), dead_letter(broker)
    refused = operator.post(CHANGELIST, select("discard_selected", letter, confirm="yes", reason=""))
    assert refused.status_code == 200
    assert "This field is required." in refused.content.decode()
    assert not DeadLetterAction.objects.exists()

    response = operator.post(
        CHANGELIST, select("discard_selected", letter, confirm="yes", reason="test order, never to be charged"),
        follow=True,
    )  # fmt: skip
    assert "Discarded 1 dead letter." in response.content.decode()
    assert task_ids(drain(broker, BILLING_DLQ)) == {kept.task_id}
    assert drain(broker, catalogue.BILLING_QUEUE) == []  # not republished
    action = DeadLetterAction.objects.get()
    assert (action.action, action.discarded, action.reason) == ("discard", 1, "test order, never to be charged")
    resolved = operator.get(CHANGELIST, {"resolved": "yes"}).content.decode()
    assert json.loads(letter.meta)["envelope"]["aggregate_id"] in resolved
    assert json.loads(kept.meta)["envelope"]["aggregate_id"] not in resolved


def test_group_replay_replays_that_group_only(broker, operator):
    group = [dead_letter(broker, exc_type="GatewayUnavailable") for _ in range(3)]
    other_cause = dead_letter(broker, exc_type="SoftTimeLimitExceeded")
    other_queue = dead_letter(broker, exc_type="GatewayUnavailable", queue=catalogue.ORDERS_QUEUE)
    params = {"queue": catalogue.BILLING_QUEUE, "exception": "GatewayUnavailable"}
    confirmation = operator.get(GROUP_REPLAY, params).content.decode()
    assert "Replay these 3 dead letters?" in confirmation
    response = operator.post(GROUP_REPLAY, {**params, "confirm": "yes", "reason": "gateway back"}, follow=True)
    assert "Replayed 3 dead letters." in response.content.decode()
    assert task_ids(drain(broker, catalogue.BILLING_QUEUE)) == {letter.task_id for letter in group}
    assert task_ids(drain(broker, BILLING_DLQ)) == {other_cause.task_id}
    assert task_ids(drain(broker, ORDERS_DLQ)) == {other_queue.task_id}
    assert DeadLetterAction.objects.get().replayed == 3


def test_a_letter_no_longer_in_its_dlq_is_reported_not_replayed(broker, operator):
    letter = dead_letter()  # recorded, but its message is gone (e.g. replayed by someone else)
    response = operator.post(CHANGELIST, select("replay_selected", letter, confirm="yes"), follow=True)
    assert "1 of the chosen dead letters is no longer in a DLQ" in response.content.decode()
    assert DeadLetterAction.objects.get().replayed == 0


# --- who may ---------------------------------------------------------------------------------------


def test_non_staff_are_sent_to_the_login_and_nothing_moves(broker):
    letter = dead_letter(broker)
    client = staff("view_deadletter", "replay_deadletter", is_staff=False)
    for response in (
        client.post(CHANGELIST, select("replay_selected", letter, confirm="yes")),
        client.post(GROUP_REPLAY, {"queue": catalogue.BILLING_QUEUE, "exception": "GatewayUnavailable"}),
    ):
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    assert task_ids(drain(broker, BILLING_DLQ)) == {letter.task_id}
    assert not DeadLetterAction.objects.exists()


def test_staff_without_the_permissions_see_no_actions_and_cannot_use_them(broker):
    letter = dead_letter(broker)
    viewer = staff("view_deadletter")
    page = viewer.get(CHANGELIST).content.decode()
    assert "replay_selected" not in page and "discard_selected" not in page
    assert "Replay this group" not in page
    viewer.post(CHANGELIST, select("replay_selected", letter, confirm="yes"))
    viewer.post(CHANGELIST, select("discard_selected", letter, confirm="yes", reason="x"))
    params = {"queue": catalogue.BILLING_QUEUE, "exception": "GatewayUnavailable", "confirm": "yes"}
    assert viewer.get(GROUP_REPLAY, params).status_code == 403
    assert viewer.post(GROUP_REPLAY, params).status_code == 403
    assert task_ids(drain(broker, BILLING_DLQ)) == {letter.task_id}
    assert not DeadLetterAction.objects.exists()


def test_replay_permission_alone_offers_replay_not_discard(broker):
    letter = dead_letter(broker)
    replayer = staff("view_deadletter", "replay_deadletter")
    page = replayer.get(CHANGELIST).content.decode()
    assert 'value="replay_selected"' in page
    assert 'value="discard_selected"' not in page
    replayer.post(CHANGELIST, select("discard_selected", letter, confirm="yes", reason="x"))
    assert task_ids(drain(broker, BILLING_DLQ)) == {letter.task_id}


def test_a_post_without_csrf_token_is_refused(broker):
    letter = dead_letter(broker)
    user = get_user_model().objects.create_superuser(username="csrf-ops", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    order = make_order(user)
    for url, data in (
        (CHANGELIST, select("replay_selected", letter, confirm="yes")),
        (GROUP_REPLAY, {"queue": catalogue.BILLING_QUEUE, "exception": "GatewayUnavailable", "confirm": "yes"}),
        (f"/admin/orders/order/{order.id}/replay-dead-letters/", {}),
    ):
        assert client.post(url, data).status_code == 403, url
    assert task_ids(drain(broker, BILLING_DLQ)) == {letter.task_id}
    assert not DeadLetterAction.objects.exists()


# --- the order's page ------------------------------------------------------------------------------


def test_the_order_page_replays_that_orders_dead_letters(broker, operator, user):
    order, other = make_order(user), make_order(user)
    letter = dead_letter(broker, order_id=str(order.id))
    other_letter = dead_letter(broker, order_id=str(other.id))
    page = operator.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert f'action="/admin/orders/order/{order.id}/replay-dead-letters/"' in page
    assert 'name="_save"' not in page

    assert operator.get(f"/admin/orders/order/{order.id}/replay-dead-letters/").status_code == 405
    response = operator.post(f"/admin/orders/order/{order.id}/replay-dead-letters/", follow=True)
    assert response.redirect_chain[-1][0] == f"/admin/orders/order/{order.id}/change/"
    assert "Replayed 1 dead letter." in response.content.decode()
    assert task_ids(drain(broker, catalogue.BILLING_QUEUE)) == {letter.task_id}
    assert task_ids(drain(broker, BILLING_DLQ)) == {other_letter.task_id}
    action = DeadLetterAction.objects.get()
    assert action.criteria["order_id"] == str(order.id)
    assert list(action.outcomes.values_list("task_id", "result")) == [(letter.task_id, "replayed")]  # not the other
    history = operator.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert f"dead letter replayed (replay by {action.actor})" in history


def test_the_order_page_offers_no_replay_without_the_permission(broker, user):
    order = make_order(user)
    letter = dead_letter(broker, order_id=str(order.id))
    viewer = staff("view_order")
    assert "replay-dead-letters" not in viewer.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert viewer.post(f"/admin/orders/order/{order.id}/replay-dead-letters/").status_code == 403
    assert task_ids(drain(broker, BILLING_DLQ)) == {letter.task_id}


def test_orders_list_shows_and_filters_dead_lettered_and_stuck_orders(operator, user):
    dead_lettered, stuck, fine = make_order(user), make_order(user), make_order(user)
    dead_letter(order_id=str(dead_lettered.id))
    stuck.created_at = timezone.now() - timedelta(minutes=30)
    stuck.save(update_fields=["created_at"])
    page = operator.get("/admin/orders/order/", {"problem": "dead_lettered"}).content.decode()
    assert str(dead_lettered.id) in page
    assert str(stuck.id) not in page and str(fine.id) not in page
    page = operator.get("/admin/orders/order/", {"problem": "stuck"}).content.decode()
    assert str(stuck.id) in page
    assert str(dead_lettered.id) not in page and str(fine.id) not in page


def test_the_order_timeline_shows_retries_dead_lettering_and_correlation(operator, user):
    order = make_order(user)
    retrying = dead_letter(order_id=str(order.id))
    TaskResult.objects.filter(pk=retrying.pk).update(
        status="RETRY", meta=retrying.meta.replace('"retries": 5', '"retries": 1')
    )
    dead_letter(order_id=str(order.id))
    page = operator.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert f"{catalogue.BILLING_HANDLE_ORDER_CREATED} attempt 2 failed, retrying" in page
    assert f"{catalogue.BILLING_HANDLE_ORDER_CREATED} failed for good after 6 attempts (dead letter)" in page
    assert "corr-1" in page
    assert f"<code>{order.correlation_id}</code>" in page


# --- read-only pages -------------------------------------------------------------------------------


def test_read_only_pages_have_no_save_button(user):
    order = make_order(user)
    letter = dead_letter(order_id=str(order.id))
    ProcessedEvent.objects.create(consumer="c", event_id=uuid.uuid4(), event_type="t", aggregate_id=str(order.id))
    action = DeadLetterAction.objects.create(actor="ops", action="discard", reason="r")
    DeadLetterOutcome.objects.create(action=action, task_id=letter.task_id, result="discarded")
    client = Client()
    client.force_login(get_user_model().objects.create_superuser(username="root", password="pw"))
    urls = [
        f"/admin/orders/order/{order.id}/change/",
        f"/admin/messaging/outboxevent/{OutboxEvent.objects.filter(aggregate_id=str(order.id)).get().pk}/change/",
        f"/admin/messaging/processedevent/{ProcessedEvent.objects.get().pk}/change/",
        f"{CHANGELIST}{letter.pk}/change/",
        f"/admin/messaging/deadletteraction/{action.pk}/change/",
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        assert 'name="_save"' not in page and 'name="_continue"' not in page, url
    assert client.get("/admin/messaging/deadletteraction/add/").status_code == 403
