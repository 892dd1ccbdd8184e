"""Billing services: bill an order exactly once, whatever is redelivered or crashes when."""

import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction

from billing.gateways import get_gateway
from billing.models import Payment, PaymentStatus
from fraud.services import fraud_check_order
from ordering.messaging.envelope import Envelope
from ordering.messaging.inbox import inbox_has, inbox_record
from orders.events import OrderCreated

logger = logging.getLogger(__name__)


def billing_handle_order_created(*, consumer: str, envelope: Envelope) -> None:
    """Fraud check, then charge or block, then record the outcome event.

    Three steps, so the gateway call is never inside a database transaction:
    1. (transaction) the payment row and fraud's decision; a fraud rejection ends here;
    2. the charge, with the payment's idempotency key: a repeat after a crash charges nothing;
    3. (transaction) the outcome, its outbox event and the inbox row.
    A redelivery at any point resumes from the state the payment is in.
    """
    if inbox_has(consumer=consumer, event_id=envelope.event_id):
        logger.info("billing: duplicate %s ignored", envelope.event_id)
        return
    order = envelope.event(OrderCreated)
    payment = _payment_after_fraud_check(consumer=consumer, envelope=envelope, order=order)
    if payment is None:
        return
    result = get_gateway().charge(
        idempotency_key=payment.idempotency_key,
        amount=payment.amount,
        currency=payment.currency,
        buyer=payment.buyer,
    )
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        if payment.status == PaymentStatus.CHARGING:
            if result.succeeded:
                payment.capture(gateway_reference=result.reference)
            else:
                payment.decline(reason=result.decline_reason)
            payment.save()
            logger.info("billing: order %s %s", order.order_id, payment.status)
        inbox_record(consumer=consumer, envelope=envelope)


def _payment_after_fraud_check(*, consumer: str, envelope: Envelope, order: OrderCreated) -> Payment | None:
    """The payment to charge, or None when there is nothing (more) to charge."""
    amount = Decimal(order.amount)
    with transaction.atomic():
        payment, _created = Payment.objects.select_for_update().get_or_create(
            order_id=order.order_id,
            defaults={
                "amount": amount,
                "currency": order.currency,
                "buyer": order.buyer,
                "idempotency_key": Payment.idempotency_key_for(order.order_id),
            },
        )
        if payment.is_final:
            # Work done by an earlier delivery; its outcome event was written with it.
            inbox_record(consumer=consumer, envelope=envelope)
            return None
        check = fraud_check_order(
            order_id=order.order_id,
            buyer=order.buyer,
            amount=amount,
            currency=order.currency,
            order_created_at=datetime.fromisoformat(order.created_at),
        )
        if check.rejected:
            payment.block(reasons=check.reasons)
            payment.save()
            inbox_record(consumer=consumer, envelope=envelope)
            logger.info("billing: order %s blocked by fraud: %s", order.order_id, check.reasons)
            return None
    return payment
