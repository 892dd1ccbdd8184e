"""Envelopes of the system's events as the relay would send them, for consumers under test."""

import uuid

from django.utils import timezone

from billing.events import PaymentCaptured
from ordering.messaging.envelope import Envelope
from orders.events import OrderCreated
from orders.models import Order
from tests.conftest import envelope_for


def order_created(amount: str = "25.00", buyer: str | None = None) -> Envelope:
    """A new order (not in the orders table: billing knows orders by their events only)."""
    order_id = str(uuid.uuid4())
    return envelope_for(
        OrderCreated(
            order_id=order_id,
            product_name="book",
            quantity=1,
            unit_price=amount,
            amount=amount,
            currency="EUR",
            buyer=buyer or f"{order_id[:8]}@example.com",
            created_at=timezone.now().isoformat(),
        )
    )


def payment_captured(
    order: Order, reference: str = "sim_1", amount: str | None = None, currency: str | None = None
) -> Envelope:
    """Billing's outcome for `order`: charged (the order's amount unless told), fraud approved it."""
    return envelope_for(
        PaymentCaptured(
            order_id=str(order.id),
            payment_id=str(uuid.uuid4()),
            amount=amount or (str(order.amount) if order.price is not None else "10.00"),
            currency=currency or order.currency or "EUR",
            gateway_reference=reference,
            fraud_score=0,
            fraud_reasons=[],
        )
    )
