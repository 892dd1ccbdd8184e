"""Order services: creation with its outbox event, guarded transitions, idempotent outcomes."""

import uuid
from decimal import Decimal

import pytest
from django.db import transaction

from billing.events import PaymentBlocked, PaymentCapturedV1
from fraud.events import FraudCheckCompleted
from ordering import catalogue
from ordering.messaging import selectors
from ordering.messaging.consumer import Outcome
from ordering.messaging.envelope import Envelope
from ordering.messaging.errors import PermanentError
from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent
from orders.models import Order, OrderStatus
from orders.services import order_mark_payment_declined, order_mark_processed
from tests.conftest import envelope_for, make_order
from tests.consumers import deliver
from tests.events import payment_captured

pytestmark = pytest.mark.django_db

CAPTURED = catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED


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


def test_payment_captured_moves_the_order_to_processed_once(user):
    order = make_order(user)
    envelope = payment_captured(order)
    assert deliver(CAPTURED, envelope) == [Outcome.ACK]
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSED
    assert order.payment_reference == "sim_1"
    # The same event again: no second effect.
    assert deliver(CAPTURED, envelope) == [Outcome.ACK]
    assert ProcessedEvent.objects.filter(event_id=envelope.event_id).count() == 1


def test_outcomes_of_many_orders_are_applied_in_one_batch(user):
    orders = [make_order(user) for _ in range(5)]
    envelopes = [payment_captured(order, reference=f"sim_{n}") for n, order in enumerate(orders)]
    assert deliver(CAPTURED, *envelopes, envelopes[0]) == [Outcome.ACK] * 6  # with a duplicate
    assert {o.payment_reference for o in Order.objects.filter(status=OrderStatus.PROCESSED)} == {
        f"sim_{n}" for n in range(5)
    }
    assert ProcessedEvent.objects.filter(consumer=CAPTURED).count() == 5


def test_a_stale_outcome_is_ignored_and_logged(user, caplog):
    order = make_order(user)
    order_mark_processed(order_id=str(order.id), payment_reference="sim_1", amount=order.amount, currency="EUR")
    order_mark_payment_declined(order_id=str(order.id), reason="late")
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSED
    assert "stale" in caplog.text


def test_an_outcome_for_an_unknown_order_is_permanent():
    with pytest.raises(PermanentError):
        order_mark_processed(order_id=str(uuid.uuid4()), payment_reference="x", amount=Decimal("10.00"), currency="EUR")


@pytest.mark.parametrize(
    "forgery",
    [
        {"order_id": str(uuid.uuid4())},
        {"amount": "0.01"},
        {"currency": "XXX"},
        {"amount": "NaN"},
        {"amount": "ten"},
    ],
)
def test_a_capture_that_is_not_the_orders_payment_is_dead_lettered_and_changes_nothing(user, forgery):
    order = make_order(user, quantity=2, price=Decimal("24.50"))
    genuine = payment_captured(order)
    forged = Envelope.from_wire({**genuine.to_wire(), "payload": {**genuine.payload, **forgery}})
    assert deliver(CAPTURED, forged) == [Outcome.REJECT]
    order.refresh_from_db()
    assert (order.status, order.payment_reference) == (OrderStatus.PENDING, "")
    assert DeadLetter.objects.count() == 1
    # The genuine capture, of 49.00 EUR, still applies.
    assert deliver(CAPTURED, genuine) == [Outcome.ACK]
    order.refresh_from_db()
    assert order.status == OrderStatus.PROCESSED


def test_an_outcome_whose_payload_names_another_order_is_dead_lettered(user):
    order, other = make_order(user), make_order(user)
    blocked = PaymentBlocked(order_id=str(other.id), payment_id=str(uuid.uuid4()), fraud_score=100, fraud_reasons=["x"])
    forged = Envelope.from_wire({**envelope_for(blocked).to_wire(), "aggregate_id": str(order.id)})
    assert deliver(catalogue.ORDERS_HANDLE_PAYMENT_BLOCKED, forged) == [Outcome.REJECT]
    assert set(Order.objects.values_list("status", flat=True)) == {OrderStatus.PENDING}


def test_a_bad_message_in_a_batch_fails_alone(user):
    orders = [make_order(user) for _ in range(3)]
    ghost = Order(id=uuid.uuid4())
    outcomes = deliver(
        CAPTURED,
        payment_captured(orders[0]),
        payment_captured(ghost),
        payment_captured(orders[1]),
        payment_captured(orders[2]),
    )
    assert outcomes == [Outcome.ACK, Outcome.REJECT, Outcome.ACK, Outcome.ACK]
    assert Order.objects.filter(status=OrderStatus.PROCESSED).count() == 3
    failure = DeadLetter.objects.get()
    assert selectors.failure_summary(failure).startswith("PermanentError")
    assert selectors.dead_letter_envelope(failure)["aggregate_id"] == str(ghost.id)


def test_a_payment_outcome_carries_the_fraud_decision_to_the_order(user):
    paid, blocked = make_order(user), make_order(user)
    assert deliver(CAPTURED, payment_captured(paid)) == [Outcome.ACK]
    rejected = PaymentBlocked(
        order_id=str(blocked.id), payment_id=str(uuid.uuid4()), fraud_score=80, fraud_reasons=["amount_over_limit"]
    )
    assert deliver(catalogue.ORDERS_HANDLE_PAYMENT_BLOCKED, envelope_for(rejected)) == [Outcome.ACK]
    paid.refresh_from_db()
    blocked.refresh_from_db()
    assert (paid.fraud_decision, paid.fraud_score, paid.fraud_reasons) == ("approved", 0, [])
    assert (blocked.status, blocked.status_reason) == (OrderStatus.CANCELED_FRAUD, "amount_over_limit")
    assert (blocked.fraud_decision, blocked.fraud_score, blocked.fraud_reasons) == (
        "rejected",
        80,
        ["amount_over_limit"],
    )


def test_a_version_1_outcome_is_still_applied(user):
    order = make_order(user)
    old = PaymentCapturedV1(
        order_id=str(order.id), payment_id=str(uuid.uuid4()), amount="10.00", currency="EUR", gateway_reference="v1"
    )
    assert deliver(CAPTURED, envelope_for(old)) == [Outcome.ACK]
    order.refresh_from_db()
    assert (order.status, order.payment_reference, order.fraud_decision) == (OrderStatus.PROCESSED, "v1", "")


def test_order_record_fraud_decision(user):
    order = make_order(user)
    envelope = envelope_for(
        FraudCheckCompleted(order_id=str(order.id), decision="rejected", score=80, reasons=["amount_over_limit"])
    )
    assert deliver(catalogue.ORDERS_HANDLE_FRAUD_CHECK_COMPLETED, envelope) == [Outcome.ACK]
    order.refresh_from_db()
    assert (order.fraud_decision, order.fraud_score, order.fraud_reasons) == ("rejected", 80, ["amount_over_limit"])
    assert order.status == OrderStatus.PENDING


def test_a_dead_lettered_message_leaves_one_warning_naming_the_order_the_queue_and_the_cause(user, caplog):
    ghost = Order(id=uuid.uuid4())
    with caplog.at_level("WARNING"):
        assert deliver(CAPTURED, payment_captured(ghost)) == [Outcome.REJECT]
    assert (
        f"order {ghost.id}: {CAPTURED} dead-lettered to orders.events.dlq after 1 attempts: PermanentError: "
        in caplog.text
    )
