"""Cancellation in the orders service: the request, and every billing outcome against every status, through
the consumers.

Billing's outcomes can reach orders in any order, and again after a replay: a move the status machine
lists is applied once, every other one is refused, logged and changes nothing.
"""

import logging
import uuid

import pytest
from django.db import transaction
from prometheus_client import REGISTRY

from billing.events import PaymentBlocked, PaymentDeclined, PaymentRefunded, PaymentVoided
from ordering import catalogue
from ordering.messaging.consumer import Outcome
from ordering.messaging.envelope import Envelope
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from orders.models import Order, OrderStatus
from orders.services import (
    OrderNotCancelable,
    order_request_cancel,
)
from tests.conftest import envelope_for, make_order
from tests.consumers import deliver
from tests.events import payment_captured
from tests.orders.statuses import SETUP, canceling, order_in, processed

pytestmark = pytest.mark.django_db


# --- billing's outcomes, as the relay delivers them ------------------------------------------------


def captured(order: Order) -> Envelope:
    return payment_captured(order, reference="sim_late")


def declined(order: Order) -> Envelope:
    return envelope_for(
        PaymentDeclined(
            order_id=str(order.id), payment_id=str(uuid.uuid4()), reason="insufficient funds", fraud_score=0,
            fraud_reasons=[],
        )
    )  # fmt: skip


def blocked(order: Order) -> Envelope:
    return envelope_for(
        PaymentBlocked(
            order_id=str(order.id), payment_id=str(uuid.uuid4()), fraud_score=100, fraud_reasons=["buyer_blocked"]
        )
    )


def voided(order: Order) -> Envelope:
    return envelope_for(PaymentVoided(order_id=str(order.id), payment_id=str(uuid.uuid4())))


def refunded(order: Order) -> Envelope:
    return envelope_for(
        PaymentRefunded(
            order_id=str(order.id), payment_id=str(uuid.uuid4()), amount=str(order.amount), currency="EUR",
            gateway_reference="sim_charge", refund_reference="sim_re_9",
        )
    )  # fmt: skip


OUTCOMES = {
    "captured": (captured, catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED),
    "declined": (declined, catalogue.ORDERS_HANDLE_PAYMENT_DECLINED),
    "blocked": (blocked, catalogue.ORDERS_HANDLE_PAYMENT_BLOCKED),
    "voided": (voided, catalogue.ORDERS_HANDLE_PAYMENT_VOIDED),
    "refunded": (refunded, catalogue.ORDERS_HANDLE_PAYMENT_REFUNDED),
}


def consume(outcome: str, order: Order) -> Envelope:
    build, consumer = OUTCOMES[outcome]
    envelope = build(order)
    assert deliver(consumer, envelope) == [Outcome.ACK]
    return envelope


def row(order: Order) -> dict:
    return Order.objects.filter(pk=order.pk).values().get()


# What each outcome does, by the status it finds: the status it leads to, and what the order then says.
# Every pair not listed is refused.
MOVES = {
    ("captured", OrderStatus.PENDING): (OrderStatus.PROCESSED, {"payment_reference": "sim_late"}),
    # Charged while the cancellation was on its way: billing refunds it, PaymentRefunded ends the order.
    ("captured", OrderStatus.CANCELING): (OrderStatus.CANCELING, {"payment_reference": "sim_late"}),
    ("declined", OrderStatus.PENDING): (OrderStatus.PAYMENT_DECLINED, {"status_reason": "insufficient funds"}),
    ("declined", OrderStatus.CANCELING): (OrderStatus.PAYMENT_DECLINED, {"status_reason": "insufficient funds"}),
    ("blocked", OrderStatus.PENDING): (OrderStatus.CANCELED_FRAUD, {"status_reason": "buyer_blocked"}),
    ("blocked", OrderStatus.CANCELING): (OrderStatus.CANCELED_FRAUD, {"status_reason": "buyer_blocked"}),
    ("voided", OrderStatus.CANCELING): (OrderStatus.CANCELED, {"status_reason": "canceled before payment"}),
    ("refunded", OrderStatus.CANCELING): (
        OrderStatus.REFUNDED,
        {
            "payment_reference": "sim_charge",
            "refund_reference": "sim_re_9",
            "status_reason": "canceled, refunded in full",
        },
    ),
}
REFUSED = [(outcome, status) for outcome in OUTCOMES for status in SETUP if (outcome, status) not in MOVES]


@pytest.mark.parametrize(("outcome", "status"), list(MOVES))
def test_an_outcome_the_status_machine_lists_is_applied_once(user, outcome, status):
    order = order_in(user, status)
    envelope = consume(outcome, order)
    target, fields = MOVES[(outcome, status)]
    after = row(order)
    assert after["status"] == target
    assert {name: after[name] for name in fields} == fields
    # The same event again (a redelivery, a replay): the inbox drops it.
    assert deliver(OUTCOMES[outcome][1], envelope) == [Outcome.ACK]
    assert row(order) == after
    assert ProcessedEvent.objects.filter(event_id=envelope.event_id).count() == 1


@pytest.mark.parametrize(("outcome", "status"), REFUSED)
def test_an_outcome_the_status_machine_does_not_list_is_refused_logged_and_changes_nothing(
    user, caplog, outcome, status
):
    order = order_in(user, status)
    before, events_before = row(order), OutboxEvent.objects.count()
    with caplog.at_level(logging.WARNING, logger="orders.services"):
        envelope = consume(outcome, order)
    assert row(order) == before
    assert OutboxEvent.objects.count() == events_before
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "orders.services"]
    assert warning.getMessage().startswith(f"order {order.id}: stale outcome ignored: order is {status}, ")
    # Acknowledged, never dead-lettered: it is late, not wrong.
    assert ProcessedEvent.objects.filter(event_id=envelope.event_id).exists()


# --- the terminal-status metric ---------------------------------------------------------------------


def terminal_counts() -> dict[str, float]:
    return {
        sample.labels["status"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "ordering_orders_terminal"
        for sample in metric.samples
        if sample.name == "ordering_orders_terminal_total"
    }


def test_a_capture_while_canceling_is_no_terminal_status_and_the_refund_is_counted_once(
    user, django_capture_on_commit_callbacks
):
    order = order_in(user, OrderStatus.CANCELING)
    before = terminal_counts()
    with django_capture_on_commit_callbacks(execute=True):
        consume("captured", order)
    assert terminal_counts() == before
    with django_capture_on_commit_callbacks(execute=True):
        consume("refunded", order)
    after = terminal_counts()
    assert after.pop(OrderStatus.REFUNDED) == before.pop(OrderStatus.REFUNDED, 0) + 1
    assert after == before


# --- the request itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [OrderStatus.PENDING, OrderStatus.PROCESSED])
def test_order_request_cancel_moves_to_canceling_with_one_event_and_a_repeat_records_nothing(user, status):
    order = order_in(user, status)
    canceled = order_request_cancel(order_id=order.id, requested_by="admin:7")
    assert canceled.status == OrderStatus.CANCELING
    assert row(order)["cancel_requested_at"] == canceled.cancel_requested_at
    again = order_request_cancel(order_id=order.id, requested_by="api:8")
    assert (again.status, again.cancel_requested_at) == (OrderStatus.CANCELING, canceled.cancel_requested_at)
    [event] = OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CANCEL_REQUESTED)
    assert event.payload["requested_by"] == "admin:7"


@pytest.mark.parametrize(
    "status",
    [OrderStatus.CANCELED, OrderStatus.REFUNDED, OrderStatus.PAYMENT_DECLINED, OrderStatus.CANCELED_FRAUD],
)
def test_order_request_cancel_of_an_order_that_is_over_raises_and_changes_nothing(user, status):
    order = order_in(user, status)
    before, events_before = row(order), OutboxEvent.objects.count()
    # Its own transaction, as every caller gives it: the service opens none (no savepoint).
    with pytest.raises(OrderNotCancelable, match=f"is {status} and can no longer be canceled"), transaction.atomic():
        order_request_cancel(order_id=order.id, requested_by="test")
    assert row(order) == before
    assert OutboxEvent.objects.count() == events_before


def test_a_refund_of_another_amount_is_not_this_orders_and_is_dead_lettered(user):
    order = make_order(user)
    processed(order)
    canceling(order)
    forged = envelope_for(
        PaymentRefunded(
            order_id=str(order.id), payment_id=str(uuid.uuid4()), amount="0.01", currency="EUR",
            gateway_reference="sim_charge", refund_reference="sim_re_9",
        )
    )  # fmt: skip
    assert deliver(catalogue.ORDERS_HANDLE_PAYMENT_REFUNDED, forged) == [Outcome.REJECT]
    assert Order.objects.get(pk=order.id).status == OrderStatus.CANCELING
