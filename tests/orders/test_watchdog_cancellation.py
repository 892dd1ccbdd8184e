"""The watchdog and CANCELING orders: stuck once the cancellation waits too long (not the order), told apart
like PENDING ones, a missing one's events published again; the creation event is recorded anew for PENDING only."""

import io
import logging
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.utils import timezone

from ordering import catalogue
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from orders.metrics import _stuck_counts
from orders.models import Order, OrderStatus
from orders.selectors import StuckState, order_list_stuck_classified
from orders.services import order_redrive_missing, order_request_cancel
from tests.conftest import make_order
from tests.orders.test_watchdog import LONG_AGO, STUCK_AFTER, creation_event, state_of, stuck_order, task_record
from tests.saga.pipeline import Pipeline

pytestmark = pytest.mark.django_db


def cancel_event(order: Order):
    return OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CANCEL_REQUESTED)


def canceling(order: Order, *, requested_ago: timedelta = 2 * STUCK_AFTER, published_ago: timedelta | None = LONG_AGO):
    """Cancel `order`, as if `requested_ago`; its cancellation event published `published_ago` (None: unpublished)."""
    order_request_cancel(order_id=order.id, requested_by="api:1")
    with connection.cursor() as cursor:  # Order refuses queryset updates: age it in SQL
        cursor.execute(
            "UPDATE orders_order SET cancel_requested_at = %s WHERE id = %s", [timezone.now() - requested_ago, order.id]
        )
    if published_ago is not None:
        cancel_event(order).update(published_at=timezone.now() - published_ago)
    order.refresh_from_db()
    return order


def billing_handled(order: Order, event_type: str, consumer: str) -> None:
    event = OutboxEvent.objects.get(aggregate_id=str(order.id), event_type=event_type)
    ProcessedEvent.objects.create(
        consumer=consumer, event_id=event.id, event_type=event_type, aggregate_id=str(order.id)
    )


def a_processed_order_canceled(user, **canceling_kwargs) -> Order:
    """Created long ago and billed (billing handled its creation); then its cancellation was requested."""
    order = stuck_order(user)
    billing_handled(order, catalogue.ORDER_CREATED, catalogue.BILLING_HANDLE_ORDER_CREATED)
    return canceling(order, **canceling_kwargs)


def test_an_order_created_long_ago_and_canceled_just_now_is_not_stuck(user):
    a_processed_order_canceled(user, requested_ago=timedelta(seconds=30))
    assert order_list_stuck_classified(older_than=STUCK_AFTER) == []
    assert order_redrive_missing(older_than=STUCK_AFTER) == []


def test_a_canceling_order_is_stuck_from_its_cancellation_request_on(user):
    order = canceling(make_order(user), published_ago=None)  # created just now, canceled "10 minutes ago"
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER)
    assert (stuck.order_id, stuck.status, stuck.since) == (
        str(order.id),
        OrderStatus.CANCELING,
        order.cancel_requested_at,
    )


def test_a_canceling_order_is_in_flight_dead_lettered_or_missing_like_a_pending_one(user):
    waiting = a_processed_order_canceled(user, published_ago=None)
    recent = a_processed_order_canceled(user, published_ago=timedelta(seconds=30))
    dead = a_processed_order_canceled(user)
    failure = task_record(dead, "FAILURE")  # billing's record names the order
    failure.task_name = catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED
    failure.save(update_fields=["task_name"])
    missing = a_processed_order_canceled(user)
    assert [state_of(order) for order in (waiting, recent, dead, missing)] == [
        StuckState.IN_FLIGHT, StuckState.IN_FLIGHT, StuckState.DEAD_LETTERED, StuckState.MISSING,
    ]  # fmt: skip
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER, order_ids=[str(missing.id)])
    assert stuck.unconsumed_events == ((cancel_event(missing).get().id, catalogue.ORDER_CANCEL_REQUESTED),)
    assert not stuck.needs_creation_event
    # The stuck-orders metric and the admin's filter count them too.
    assert _stuck_counts(older_than=STUCK_AFTER) == {"in_flight": 2, "dead_lettered": 1, "missing": 1}


def test_a_missing_cancellation_is_published_again_under_its_own_id_timed_from_the_request(user, caplog):
    order = a_processed_order_canceled(user)
    event_id = cancel_event(order).get().id
    with caplog.at_level(logging.WARNING, logger="orders.services"):
        [redrive] = order_redrive_missing(older_than=STUCK_AFTER)
    assert (redrive.order_id, redrive.event_type, redrive.event_ids, redrive.republished) == (
        str(order.id), catalogue.ORDER_CANCEL_REQUESTED, (event_id,), True,
    )  # fmt: skip
    assert list(cancel_event(order).values_list("id", "published_at")) == [(event_id, None)]
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Waiting since the request (10 min), not since the order was created (also 10 min ago, plus the test's time).
    seconds = int(line.split(" event missing after ")[1].split(" s;")[0])
    assert 2 * STUCK_AFTER.total_seconds() <= seconds < 2 * STUCK_AFTER.total_seconds() + 60
    assert line.startswith(f"order {order.id}: order_cancel_requested event missing after ")
    assert order_redrive_missing(older_than=STUCK_AFTER) == []  # now in flight


@pytest.mark.parametrize("cancel_recorded", [True, False])
def test_a_canceling_orders_creation_event_is_never_recorded_anew(user, caplog, cancel_recorded):
    """Its creation event gone and never billed: for a PENDING order the watchdog records it again; a CANCELING
    one is billing's to void (its cancellation carries what billing needs), or an operator's."""
    order = stuck_order(user)
    creation_event(order).delete()
    canceling(order)
    if cancel_recorded:  # and billing handled it: nothing left to deliver
        billing_handled(order, catalogue.ORDER_CANCEL_REQUESTED, catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED)
    else:
        cancel_event(order).delete()
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER)
    assert (stuck.state, stuck.needs_creation_event) == (StuckState.MISSING, False)
    assert stuck.detail == (
        "billing handled the cancellation and no outcome is left to deliver: needs an operator"
        if cancel_recorded
        else "no cancel_requested event in the outbox: needs an operator"
    )
    with caplog.at_level(logging.ERROR, logger="orders.services"):
        assert order_redrive_missing(older_than=STUCK_AFTER) == []
    assert not creation_event(order).exists()
    assert f"order {order.id}: CANCELING for " in caplog.text


def test_check_pipeline_and_the_admin_name_a_stuck_canceling_order(user):
    order = a_processed_order_canceled(user)
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("check_pipeline", stdout=out)
    report = out.getvalue()
    assert "orders pending or canceling > 5 min: 1 (in flight 0, dead-lettered 0, missing 1)" in report
    assert f"order {order.id}  canceling 10 min  missing: published long ago, never handled: " in report
    staff = get_user_model().objects.create_superuser(username="ops", password="pw")
    client = Client()
    client.force_login(staff)
    listing = client.get("/admin/orders/order/", {"problem": "stuck"}).content.decode()
    assert str(order.id) in listing
    page = client.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert "stuck for 10 min, missing: published long ago, never handled: orders.order.cancel_requested" in page


@pytest.mark.django_db(transaction=True)
def test_a_refund_orders_never_heard_of_is_published_again_and_ends_the_order(user):
    """The whole way: billing refunded, its PaymentRefunded was published and lost; the re-drive sends it again."""
    order = make_order(user)
    pipeline = Pipeline(str(order.id))
    pipeline.consume_all()  # PROCESSED
    canceling(order, published_ago=None)
    pipeline.consume("cancel_requested")  # billing refunds; orders never gets the news
    OutboxEvent.objects.filter(aggregate_id=str(order.id)).update(published_at=timezone.now() - LONG_AGO)
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER)
    assert [event_type for _, event_type in stuck.unconsumed_events] == [catalogue.PAYMENT_REFUNDED]
    [redrive] = order_redrive_missing(older_than=STUCK_AFTER)
    assert redrive.event_type == catalogue.PAYMENT_REFUNDED
    pipeline.consume("refunded")  # what the relay's second publication delivers
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    assert order_list_stuck_classified(older_than=STUCK_AFTER) == []
