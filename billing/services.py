"""Billing services: bill each order exactly once, whatever is redelivered or crashes when."""

import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction

from billing.gateways import ChargeResult, get_gateway
from billing.models import Payment, PaymentStatus
from fraud.services import FraudVerdict, OrderToCheck, fraud_check_orders
from ordering.messaging.consumer import EventBatch
from ordering.messaging.envelope import Envelope
from ordering.messaging.outbox import outbox_collected
from orders.events import OrderCreated

logger = logging.getLogger(__name__)


def billing_bill_orders(batch: EventBatch) -> None:
    """Fraud check, then charge or block, then record each outcome: a batch of new orders at a time.

    Three steps, so the gateway call is never inside a database transaction:
    1. (transaction) a payment per order not seen before, after fraud's decision; a rejection
       blocks the payment and records its outcome and inbox row right there;
    2. the charges, each with its payment's idempotency key: a repeat after a crash charges nothing;
    3. (transaction) the inbox rows, then each outcome and its outbox event.
    A redelivery at any point resumes from the state its payment is in. Duplicates that run at the
    same time serialise on their inbox row in step 3; copies of one order under different event
    ids serialise on the payment row.
    """
    orders = [(envelope, envelope.event(OrderCreated)) for envelope in batch.envelopes]
    payments, checks = _open_payments(batch, orders)
    charging = {order_id: p for order_id, p in payments.items() if p.status == PaymentStatus.CHARGING}
    if not charging:
        return
    gateway = get_gateway()
    results = {
        order_id: gateway.charge(
            idempotency_key=payment.idempotency_key,
            amount=payment.amount,
            currency=payment.currency,
            buyer=payment.buyer,
        )
        for order_id, payment in charging.items()
    }
    with transaction.atomic(), outbox_collected():
        fresh = batch.claim([envelope for envelope, order in orders if order.order_id in results])
        # Locked, and still charging: another event of the same order may have recorded it first.
        still_charging = Payment.lock_charging([charging[e.aggregate_id].pk for e in fresh])
        for envelope, _ in batch.each(fresh, OrderCreated):
            payment = charging[envelope.aggregate_id]
            if payment.pk in still_charging:
                _record_outcome(payment, results[envelope.aggregate_id], checks[envelope.aggregate_id])


def _open_payments(
    batch: EventBatch, orders: list[tuple[Envelope, OrderCreated]]
) -> tuple[dict[str, Payment], dict[str, FraudVerdict]]:
    """Step 1: every order's payment, opened for orders seen the first time, and fraud's decisions.

    Fraud decides on the new orders; a payment still charging (an earlier delivery stopped
    before its outcome) gets the decision fraud made then.
    """
    with transaction.atomic(), outbox_collected():
        opened = {
            order.order_id: Payment.open(
                order_id=order.order_id, amount=Decimal(order.amount), currency=order.currency, buyer=order.buyer
            )
            for _, order in orders
        }
        new = Payment.open_unless_billed(list(opened.values()))
        payments = {order_id: opened[order_id] for order_id in new}
        billed_before = [order_id for order_id in opened if order_id not in new]
        if billed_before:  # a redelivery, a replay or a copy: the payment an earlier delivery opened
            payments.update(
                (str(p.order_id), p) for p in Payment.objects.select_for_update().filter(order_id__in=billed_before)
            )
        to_check = {
            order.order_id: order
            for _, order in orders
            if order.order_id in new or payments[order.order_id].status == PaymentStatus.CHARGING
        }
        checks = fraud_check_orders(
            orders=[
                OrderToCheck(
                    order_id=order.order_id,
                    buyer=order.buyer,
                    amount=Decimal(order.amount),
                    currency=order.currency,
                    order_created_at=datetime.fromisoformat(order.created_at),
                )
                for order in to_check.values()
            ]
        )
        first_envelope = {}
        for envelope, order in orders:
            first_envelope.setdefault(order.order_id, envelope)
        rejected = [first_envelope[order_id] for order_id in new if checks[order_id].rejected]
        for _, order in batch.each(rejected, OrderCreated):
            check = checks[order.order_id]
            payment = payments[order.order_id]
            payment.block(fraud_score=check.score, fraud_reasons=check.reasons)
            payment.save(update_fields=["status", "outcome_reason", "updated_at"])
            logger.info("billing: order %s blocked by fraud: %s", order.order_id, check.reasons)
        # Orders whose billing is over (blocked now, or by an earlier delivery): nothing more to do.
        batch.claim([envelope for envelope, order in orders if payments[order.order_id].is_final])
    return payments, checks


def _record_outcome(payment: Payment, result: ChargeResult, check: FraudVerdict) -> None:
    """Step 3 for one payment, locked: captured or declined, with its outcome event."""
    if payment.status != PaymentStatus.CHARGING:
        return  # another event of the same order, earlier in this batch, recorded it
    if result.succeeded:
        payment.capture(gateway_reference=result.reference, fraud_score=check.score, fraud_reasons=check.reasons)
    else:
        payment.decline(reason=result.decline_reason, fraud_score=check.score, fraud_reasons=check.reasons)
    payment.save(update_fields=["status", "gateway_reference", "outcome_reason", "updated_at"])
    logger.info("billing: order %s %s", payment.order_id, payment.status)
