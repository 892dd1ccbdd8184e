"""Order services: creation with its outbox event, guarded transitions, idempotent outcomes."""

import uuid
from decimal import Decimal

import pytest
from django.db import transaction

from billing.events import PaymentCaptured, PaymentDeclined
from fraud.events import FraudCheckCompleted
from ordering import catalogue
from ordering.messaging.errors import PermanentError
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from orders.models import Order, OrderStatus
from orders.services import order_apply_outcome, order_record_fraud_decision
from tests.conftest import envelope_for, make_order

pytestmark = pytest.mark.django_db

CAPTURED = catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED


def captured(order, reference="sim_1"):
    return envelope_for(
        PaymentCaptured(
            order_id=str(order.id),
            payment_id=str(uuid.uuid4()),
            amount="10.00",
            currency="EUR",
            gateway_reference=reference,
        )
    )


def test_order_create_records_outbox_event_in_same_transaction(user):
    order = make_order(user, quantity=3, price=Decimal("2.50"))
    assert order.status == OrderStatus.PENDING
    event = OutboxEvent.objects.get(aggregate_id=str(order.id))
    assert event.event_type == "orders.order.created"
    assert event.version == 1
    assert event.published_at is None
    assert event.payload["amount"] == "7.50"  # money travels as a decimal string
    assert event.payload["unit_price"] == "2.50"
    assert event.payload["quantity"] == 3


def test_order_create_rolled_back_leaves_no_event(user):
    with pytest.raises(RuntimeError), transaction.atomic():
        make_order(user)
        raise RuntimeError("the request failed after the order was saved")
    assert not Order.objects.exists()
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_order_saved_with_staged_events_outside_a_transaction_is_refused(user):
    order = Order(owner=user, product_name="x", price=Decimal("1.00"), currency="EUR", buyer="b")
    order.stage_created()
    with pytest.raises(RuntimeError, match=r"inside transaction.atomic"):
        order.save()  # autocommit: the row is committed before the receiver runs
    assert not OutboxEvent.objects.exists()


def test_order_bulk_updates_are_refused(user):
    make_order(user)
    with pytest.raises(TypeError):
        Order.objects.update(status=OrderStatus.PROCESSED)


def test_order_apply_outcome_moves_pending_forward_once(user):
    order = make_order(user)
    envelope = captured(order)
    order_apply_outcome(consumer=CAPTURED, envelope=envelope, target=OrderStatus.PROCESSED, payment_reference="sim_1")
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSED
    assert order.payment_reference == "sim_1"
    # The same event again: no second effect.
    order_apply_outcome(consumer=CAPTURED, envelope=envelope, target=OrderStatus.PROCESSED, payment_reference="sim_1")
    assert ProcessedEvent.objects.filter(event_id=envelope.event_id).count() == 1


def test_order_apply_outcome_stale_event_is_ignored_and_logged(user, caplog):
    order = make_order(user)
    order_apply_outcome(
        consumer=CAPTURED, envelope=captured(order), target=OrderStatus.PROCESSED, payment_reference="sim_1"
    )
    declined = envelope_for(PaymentDeclined(order_id=str(order.id), payment_id="p", reason="late"))
    order_apply_outcome(
        consumer=catalogue.ORDERS_HANDLE_PAYMENT_DECLINED,
        envelope=declined,
        target=OrderStatus.PAYMENT_DECLINED,
        reason="late",
    )
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSED
    assert "stale" in caplog.text


def test_order_apply_outcome_for_unknown_order_is_permanent(user):
    ghost = Order(id=uuid.uuid4())
    with pytest.raises(PermanentError):
        order_apply_outcome(
            consumer=CAPTURED, envelope=captured(ghost), target=OrderStatus.PROCESSED, payment_reference="x"
        )


def test_order_record_fraud_decision(user):
    order = make_order(user)
    envelope = envelope_for(
        FraudCheckCompleted(order_id=str(order.id), decision="rejected", score=80, reasons=["amount_over_limit"])
    )
    order_record_fraud_decision(
        consumer="c", envelope=envelope, decision="rejected", score=80, reasons=["amount_over_limit"]
    )
    order.refresh_from_db()
    assert (order.fraud_decision, order.fraud_score, order.fraud_reasons) == ("rejected", 80, ["amount_over_limit"])
    assert order.status == OrderStatus.PENDING
