"""The watchdog through real processes: beat sends it, a worker runs it, relay and workers finish the order."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.models import Payment, SimulatedCharge
from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from orders.models import Order
from tests.conftest import make_order
from tests.integration.conftest import wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

STUCK_FOR = timedelta(minutes=10)  # past WATCHDOG["STUCK_AFTER_SECONDS"] (5 min)


@pytest.fixture(scope="module")
def watchdog(system):
    """Beat sending the watchdog every second, and a worker on the maintenance queue, for this module."""
    worker = system.add_worker("maintenance", catalogue.MAINTENANCE_QUEUE, concurrency=1)
    beat = system.add_beat(WATCHDOG_INTERVAL_SECONDS="1")
    try:
        worker.start()
        beat.start()
        yield worker
    finally:
        for process in (beat, worker):
            process.stop()
            del system.processes[process.name]


def stuck_order(user, *, lost: str) -> Order:
    """An order PENDING for STUCK_FOR whose creation event never reached billing.

    lost="deleted": its outbox row deleted before the relay saw it; "published": marked published
    long ago but never delivered (a message lost after the broker's confirm).
    """
    with transaction.atomic():
        order = make_order(user)
        created = OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED)
        if lost == "deleted":
            created.delete()
        else:
            created.update(published_at=timezone.now() - STUCK_FOR)
        with connection.cursor() as cursor:  # Order refuses queryset updates: age it in SQL
            cursor.execute(
                "UPDATE orders_order SET created_at = %s WHERE id = %s", [timezone.now() - STUCK_FOR, order.id]
            )
    return order


def assert_charged_once(order: Order) -> None:
    payment = Payment.objects.get(order_id=order.id)
    assert SimulatedCharge.objects.filter(idempotency_key=payment.idempotency_key).count() == 1


def test_an_order_whose_event_was_deleted_before_publishing_is_re_driven_and_processed(system, watchdog, user):
    order = stuck_order(user, lost="deleted")
    wait_for_status(order.id, "PROCESSED", timeout=60)
    assert_charged_once(order)
    [event] = OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED)
    watchdog.wait_for_log(f"order {order.id}: order_created event missing after ", timeout=5)
    assert f"; re-driven as event {event.id}" in watchdog.log_text()


def test_an_event_published_but_never_delivered_is_published_again_and_processed(system, watchdog, user):
    order = stuck_order(user, lost="published")
    original = OutboxEvent.objects.get(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED)
    wait_for_status(order.id, "PROCESSED", timeout=60)
    assert_charged_once(order)
    # The same event, published again: no new creation event.
    assert list(OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED)) == [
        original
    ]
    watchdog.wait_for_log(f"re-driven as event {original.id} (published again)", timeout=5)
