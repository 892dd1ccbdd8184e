"""The watchdog: stuck orders told apart (in flight, dead-lettered, missing); only missing ones re-driven."""

import json
import logging
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from billing.models import Payment, SimulatedCharge
from ordering import catalogue
from ordering.celery import app
from ordering.messaging.consumer import Outcome
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from orders.models import Order
from orders.selectors import StuckState, order_list_stuck_classified, stuck_order_counts
from orders.services import order_redrive_missing
from tests.conftest import make_order
from tests.consumers import deliver

pytestmark = pytest.mark.django_db

STUCK_AFTER = timedelta(minutes=5)
LONG_AGO = timedelta(hours=1)  # past WATCHDOG["IN_FLIGHT_SECONDS"]


def stuck_order(user, *, published_ago: timedelta | None = LONG_AGO) -> Order:
    """An order PENDING for 10 minutes; its creation event published `published_ago` (None: unpublished)."""
    order = make_order(user)
    with connection.cursor() as cursor:  # Order refuses queryset updates: age it in SQL
        cursor.execute(
            "UPDATE orders_order SET created_at = %s WHERE id = %s", [timezone.now() - 2 * STUCK_AFTER, order.id]
        )
    if published_ago is not None:
        creation_event(order).update(published_at=timezone.now() - published_ago)
    return order


def creation_event(order: Order):
    return OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED)


def task_record(order: Order, status: str, *, at: timedelta = timedelta(0), handled: bool = False) -> TaskResult:
    """billing's retry or failure record for the order's creation event (as the consumer stores it)."""
    event = creation_event(order).get()
    record = TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=catalogue.BILLING_HANDLE_ORDER_CREATED, status=status,
        meta=json.dumps({"envelope": {"event_id": str(event.id), "aggregate_id": str(order.id)}}),
    )  # fmt: skip
    TaskResult.objects.filter(pk=record.pk).update(date_done=timezone.now() - at)
    if handled:
        ProcessedEvent.objects.create(
            consumer=catalogue.BILLING_HANDLE_ORDER_CREATED, event_id=event.id,
            event_type=catalogue.ORDER_CREATED, aggregate_id=str(order.id),
        )  # fmt: skip
    return record


def state_of(order: Order) -> StuckState:
    [stuck] = [s for s in order_list_stuck_classified(older_than=STUCK_AFTER) if s.order_id == str(order.id)]
    return stuck.state


def test_a_fresh_order_is_not_stuck(user):
    make_order(user)
    assert order_list_stuck_classified(older_than=STUCK_AFTER) == []


def test_an_order_whose_event_waits_for_the_relay_is_in_flight(user):
    assert state_of(stuck_order(user, published_ago=None)) is StuckState.IN_FLIGHT


def test_an_order_whose_event_was_published_recently_is_in_flight(user):
    assert state_of(stuck_order(user, published_ago=timedelta(seconds=30))) is StuckState.IN_FLIGHT


def test_an_order_whose_task_waits_for_a_retry_is_in_flight(user):
    order = stuck_order(user)
    task_record(order, "RETRY", at=timedelta(seconds=30))
    assert state_of(order) is StuckState.IN_FLIGHT


def test_an_order_with_an_unresolved_dead_letter_is_dead_lettered(user):
    order = stuck_order(user)
    task_record(order, "FAILURE")
    assert state_of(order) is StuckState.DEAD_LETTERED


def test_an_order_published_long_ago_and_never_handled_is_missing(user):
    order = stuck_order(user)
    task_record(order, "RETRY", at=LONG_AGO)  # an old retry is no longer on its way
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER)
    assert stuck.state is StuckState.MISSING
    assert stuck.unconsumed_events == ((creation_event(order).get().id, catalogue.ORDER_CREATED),)


def test_an_order_without_its_creation_event_is_missing(user):
    order = stuck_order(user)
    creation_event(order).delete()
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER)
    assert (stuck.state, stuck.needs_creation_event) == (StuckState.MISSING, True)


def test_counts_by_state_name_every_state(user):
    stuck_order(user, published_ago=None)
    task_record(stuck_order(user), "FAILURE")
    creation_event(stuck_order(user)).delete()
    stuck_order(user)
    assert stuck_order_counts(older_than=STUCK_AFTER) == {"in flight": 1, "dead-lettered": 1, "missing": 2}


def test_an_order_whose_event_was_deleted_before_publishing_is_recorded_again(user, caplog):
    order = stuck_order(user, published_ago=None)
    creation_event(order).delete()
    with caplog.at_level(logging.WARNING, logger="orders.services"):
        [redrive] = order_redrive_missing(older_than=STUCK_AFTER)
    event = creation_event(order).get()
    assert (redrive.order_id, redrive.event_ids, redrive.republished) == (str(order.id), (event.id,), False)
    assert event.published_at is None  # the relay publishes it
    assert event.payload["order_id"] == str(order.id)
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith(f"order {order.id}: order_created event missing after ")
    assert line.endswith(f" s; re-driven as event {event.id}")
    # Now in flight: a second run (or a second beat) leaves it alone.
    assert order_redrive_missing(older_than=STUCK_AFTER) == []
    assert creation_event(order).count() == 1


def test_an_event_published_long_ago_and_never_handled_is_published_again_under_its_own_id(user, caplog):
    order = stuck_order(user)
    event_id = creation_event(order).get().id
    with caplog.at_level(logging.WARNING, logger="orders.services"):
        [redrive] = order_redrive_missing(older_than=STUCK_AFTER)
    assert (redrive.event_ids, redrive.republished) == ((event_id,), True)
    assert list(creation_event(order).values_list("id", "published_at")) == [(event_id, None)]
    assert f"re-driven as event {event_id} (published again)" in caplog.text


def test_in_flight_and_dead_lettered_orders_are_not_re_driven(user):
    waiting = stuck_order(user, published_ago=None)
    recent = stuck_order(user, published_ago=timedelta(seconds=30))
    retrying = stuck_order(user)
    task_record(retrying, "RETRY", at=timedelta(seconds=30))
    dead = stuck_order(user)
    task_record(dead, "FAILURE")
    before = set(OutboxEvent.objects.values_list("id", "published_at"))
    assert order_redrive_missing(older_than=STUCK_AFTER) == []
    assert set(OutboxEvent.objects.values_list("id", "published_at")) == before
    assert {state_of(o) for o in (waiting, recent, retrying)} == {StuckState.IN_FLIGHT}
    assert state_of(dead) is StuckState.DEAD_LETTERED


def test_a_resolved_dead_letter_does_not_hold_an_order(user):
    order = stuck_order(user)
    task_record(order, "FAILURE", handled=True)  # replayed and handled since: billing has it
    [stuck] = order_list_stuck_classified(older_than=STUCK_AFTER)
    assert stuck.state is StuckState.MISSING
    assert stuck.unconsumed_events == ()  # billing handled it; no outcome left to deliver


@pytest.mark.django_db(transaction=True)
def test_a_creation_event_recorded_again_under_a_new_id_charges_an_already_charged_order_nothing_more(user):
    """Billing's payment is unique per order and charged under the key `order-<id>`: a new event id changes nothing."""
    order = stuck_order(user)
    original = creation_event(order).get()
    assert deliver(catalogue.BILLING_HANDLE_ORDER_CREATED, original.envelope()) == [Outcome.ACK]
    assert SimulatedCharge.objects.count() == 1
    # Both the event and billing's memory of it gone (purged, deleted by hand): recorded anew.
    OutboxEvent.objects.filter(aggregate_id=str(order.id)).delete()
    ProcessedEvent.objects.filter(aggregate_id=str(order.id)).delete()
    [redrive] = order_redrive_missing(older_than=STUCK_AFTER)
    assert redrive.event_ids != (original.id,)
    again = creation_event(order).get()
    assert deliver(catalogue.BILLING_HANDLE_ORDER_CREATED, again.envelope()) == [Outcome.ACK]
    assert SimulatedCharge.objects.count() == 1
    assert Payment.objects.filter(order_id=order.id).count() == 1


def test_the_periodic_task_re_drives(user):
    order = stuck_order(user, published_ago=None)
    creation_event(order).delete()
    app.loader.import_default_modules()
    assert app.tasks[catalogue.ORDERS_REDRIVE_STUCK_ORDERS].apply().get() == 1
    assert creation_event(order).count() == 1
