"""Billing: fraud, then one charge per order, then one outcome event, whatever is redelivered."""

import dataclasses
import uuid
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.gateways import GatewayUnavailable, SimulatedGateway
from billing.models import Payment, PaymentStatus, SimulatedCharge, SimulatedGatewayOutage
from billing.tasks import handle_order_created
from fraud.models import BlockedBuyer
from ordering import catalogue
from ordering.messaging import selectors
from ordering.messaging.consumer import Outcome
from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent
from orders.events import OrderCreated
from tests.conftest import envelope_for
from tests.consumers import deliver
from tests.events import order_created

pytestmark = pytest.mark.django_db(transaction=True)

CONSUMER = catalogue.BILLING_HANDLE_ORDER_CREATED


def bill(*envelopes) -> None:
    """Billing's consumer, as a worker runs it, on one batch: every message handled."""
    assert deliver(CONSUMER, *envelopes) == [Outcome.ACK] * len(envelopes)


def outcome_events(envelope):
    return list(
        OutboxEvent.objects.filter(aggregate_id=envelope.aggregate_id, event_type__startswith="billing.").values_list(
            "event_type", flat=True
        )
    )


def test_billing_captures_and_records_outcome():
    envelope = order_created()
    bill(envelope)
    payment = Payment.objects.get(order_id=envelope.aggregate_id)
    assert payment.status == PaymentStatus.CAPTURED
    assert payment.amount == Decimal("25.00")
    assert SimulatedCharge.objects.filter(idempotency_key=payment.idempotency_key, succeeded=True).count() == 1
    assert outcome_events(envelope) == ["billing.payment.captured"]
    assert ProcessedEvent.objects.filter(consumer=CONSUMER, event_id=envelope.event_id).exists()


def test_billing_duplicate_delivery_charges_once():
    envelope = order_created()
    bill(envelope)
    bill(envelope)
    assert SimulatedCharge.objects.count() == 1
    assert outcome_events(envelope) == ["billing.payment.captured"]


def test_billing_crash_after_charge_before_commit_charges_once():
    envelope = order_created()
    # First delivery: payment row created and the gateway charged, then the worker died
    # before the outcome was committed (simulated by charging directly).
    key = Payment.idempotency_key_for(envelope.aggregate_id)
    Payment.objects.create(
        order_id=envelope.aggregate_id, amount=Decimal("25.00"), currency="EUR", buyer="b", idempotency_key=key
    )
    SimulatedGateway().charge(idempotency_key=key, amount=Decimal("25.00"), currency="EUR", buyer="b")
    bill(envelope)  # the redelivery
    assert SimulatedCharge.objects.count() == 1
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.CAPTURED


def test_billing_another_event_for_a_billed_order_charges_nothing_more():
    first = order_created()
    bill(first)
    replayed_copy = envelope_for(first.event(OrderCreated))  # same order, new event id
    bill(replayed_copy)
    assert SimulatedCharge.objects.count() == 1
    assert outcome_events(first) == ["billing.payment.captured"]


def test_billing_declined_is_a_business_outcome(settings):
    settings.SIMULATED_GATEWAY_DECLINE_ABOVE = Decimal("100.00")
    envelope = order_created(amount="100.01")
    bill(envelope)
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.DECLINED
    assert outcome_events(envelope) == ["billing.payment.declined"]


def test_billing_fraud_rejection_blocks_without_charging():
    BlockedBuyer.objects.create(buyer="mallory@example.com")
    envelope = order_created(buyer="mallory@example.com")
    bill(envelope)
    payment = Payment.objects.get(order_id=envelope.aggregate_id)
    assert payment.status == PaymentStatus.BLOCKED
    assert not SimulatedCharge.objects.exists()
    assert outcome_events(envelope) == ["billing.payment.blocked"]
    # Fraud's decision travels in the outcome: one route, no event of fraud's own.
    blocked = OutboxEvent.objects.get(event_type="billing.payment.blocked", aggregate_id=envelope.aggregate_id)
    assert (blocked.version, blocked.payload["fraud_score"], blocked.payload["fraud_reasons"]) == (
        2,
        100,
        ["buyer_blocked"],
    )
    assert not OutboxEvent.objects.filter(event_type="fraud.check.completed").exists()


def test_billing_gateway_outage_is_transient_and_leaves_payment_charging():
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timezone.timedelta(minutes=1))
    envelope = order_created()
    with pytest.raises(GatewayUnavailable):
        handle_order_created(envelope.to_wire())  # called directly: the failure reaches the caller
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.CHARGING
    assert not ProcessedEvent.objects.exists()
    SimulatedGatewayOutage.objects.update(until=timezone.now())
    bill(envelope)
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.CAPTURED


def test_billing_a_batch_charges_each_order_once_and_records_each_outcome():
    envelopes = [order_created() for _ in range(8)]
    bill(*envelopes, envelopes[0], envelopes[3])  # two copies delivered in the same batch
    assert Payment.objects.filter(status=PaymentStatus.CAPTURED).count() == 8
    assert SimulatedCharge.objects.count() == 8
    assert OutboxEvent.objects.filter(event_type="billing.payment.captured").count() == 8
    assert ProcessedEvent.objects.filter(consumer=CONSUMER).count() == 8


def test_billing_two_events_of_one_order_in_a_batch_bill_it_once():
    first = order_created()
    copy = envelope_for(first.event(OrderCreated))  # same order, another event id
    bill(first, copy)
    assert SimulatedCharge.objects.count() == 1
    assert outcome_events(first) == ["billing.payment.captured"]
    assert ProcessedEvent.objects.filter(consumer=CONSUMER).count() == 2


def test_billing_one_bad_message_fails_alone_and_is_dead_lettered():
    good = [order_created() for _ in range(3)]
    bad = envelope_for(OrderCreated(**{**good[0].payload, "order_id": str(uuid.uuid4()), "amount": "x"}))
    outcomes = deliver(CONSUMER, good[0], bad, good[1], good[2])
    assert outcomes == [Outcome.ACK, Outcome.REJECT, Outcome.ACK, Outcome.ACK]
    assert Payment.objects.filter(status=PaymentStatus.CAPTURED).count() == 3
    failure = DeadLetter.objects.get()
    assert selectors.dead_letter_envelope(failure)["event_id"] == str(bad.event_id)
    assert selectors.failure_attempts(failure) == 1


def test_billing_each_outcome_of_a_batch_names_its_own_cause_and_correlation():
    envelopes = [dataclasses.replace(order_created(), correlation_id=f"request-{n}") for n in range(5)]
    bill(*envelopes)
    for envelope in envelopes:
        outcome = OutboxEvent.objects.get(aggregate_id=envelope.aggregate_id, event_type="billing.payment.captured")
        assert (outcome.causation_id, outcome.correlation_id) == (envelope.event_id, envelope.correlation_id)
