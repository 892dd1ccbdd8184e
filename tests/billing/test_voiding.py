"""A payment canceled while charging and found so again (a retry, a replay) is voided at the gateway, not charged.

An earlier attempt may have reached the gateway before it failed; billing voids the payment's key
instead of charging it: either nothing was charged and nothing ever will be (VOIDED), or the
earlier charge comes back and is refunded.
"""

from decimal import Decimal

import pytest
from django.utils import timezone

from billing.gateways import GatewayUnavailable, SimulatedGateway
from billing.models import Payment, PaymentStatus, SimulatedCharge, SimulatedGatewayOutage, SimulatedRefund
from billing.tasks import handle_order_created
from ordering import catalogue
from ordering.messaging.consumer import Outcome
from ordering.messaging.models import OutboxEvent
from orders.events import OrderCancelRequested
from tests.conftest import envelope_for
from tests.consumers import deliver
from tests.events import order_created

pytestmark = pytest.mark.django_db(transaction=True)


def billing_events(order_id: str) -> list[str]:
    rows = OutboxEvent.objects.filter(aggregate_id=order_id, event_type__startswith="billing.").order_by("created_at")
    return list(rows.values_list("event_type", flat=True))


def canceled_while_charging(envelope) -> Payment:
    """The payment as a first delivery leaves it when the charge failed and the cancellation came meanwhile."""
    return Payment.objects.create(
        order_id=envelope.aggregate_id,
        amount=Decimal("25.00"),
        currency="EUR",
        buyer="b@example.com",
        idempotency_key=Payment.idempotency_key_for(envelope.aggregate_id),
        cancel_requested=True,
    )


def test_a_retry_of_a_payment_canceled_while_charging_voids_it_and_charges_nothing():
    envelope = order_created()
    canceled_while_charging(envelope)
    assert deliver(catalogue.BILLING_HANDLE_ORDER_CREATED, envelope) == [Outcome.ACK]
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.VOIDED
    assert billing_events(envelope.aggregate_id) == [catalogue.PAYMENT_VOIDED]
    assert not SimulatedCharge.objects.filter(succeeded=True).exists()


def test_a_retry_of_a_payment_whose_earlier_attempt_was_charged_refunds_that_charge():
    envelope = order_created()
    payment = canceled_while_charging(envelope)
    # The earlier attempt reached the gateway, then its worker died before recording it.
    SimulatedGateway().charge(
        idempotency_key=payment.idempotency_key, amount=payment.amount, currency="EUR", buyer="b@example.com"
    )
    assert deliver(catalogue.BILLING_HANDLE_ORDER_CREATED, envelope) == [Outcome.ACK]
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.REFUNDED
    assert billing_events(envelope.aggregate_id) == [catalogue.PAYMENT_CAPTURED, catalogue.PAYMENT_REFUNDED]
    assert (SimulatedCharge.objects.count(), SimulatedRefund.objects.filter(succeeded=True).count()) == (1, 1)


def test_a_charge_outage_then_a_cancellation_ends_voided_with_nothing_charged():
    envelope = order_created()
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timezone.timedelta(minutes=1))
    with pytest.raises(GatewayUnavailable):
        handle_order_created(envelope.to_wire())  # called directly: the failure reaches the caller
    cancel = _cancel_of(envelope)
    assert deliver(catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED, cancel) == [Outcome.ACK]
    assert Payment.objects.get(order_id=envelope.aggregate_id).cancel_requested
    SimulatedGatewayOutage.objects.update(until=timezone.now())
    assert deliver(catalogue.BILLING_HANDLE_ORDER_CREATED, envelope) == [Outcome.ACK]  # the retry
    assert Payment.objects.get(order_id=envelope.aggregate_id).status == PaymentStatus.VOIDED
    assert not SimulatedCharge.objects.filter(succeeded=True).exists()


def _cancel_of(created):
    return envelope_for(
        OrderCancelRequested(
            order_id=created.aggregate_id,
            amount=created.payload["amount"],
            currency=created.payload["currency"],
            buyer=created.payload["buyer"],
            requested_at=timezone.now().isoformat(),
            requested_by="api:1",
        )
    )
