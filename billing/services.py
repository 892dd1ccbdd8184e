"""Billing services: bill each order exactly once, whatever is redelivered or crashes when."""

import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction

from billing.gateways import ChargeResult, PaymentGateway, get_gateway
from billing.models import Payment, PaymentStatus
from fraud.services import FraudVerdict, OrderToCheck, fraud_check_orders
from ordering.messaging.consumer import EventBatch
from ordering.messaging.context import handling_event
from ordering.messaging.envelope import Envelope
from ordering.messaging.errors import PermanentError
from ordering.messaging.outbox import outbox_collected
from orders.events import OrderCancelRequested, OrderCreated

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

    An order canceled meanwhile is on its payment (billing_cancel_orders): canceled before step 1,
    its payment is a void tombstone and nothing is charged; canceled while its payment was
    charging and found so again (a retry, a replay), its key is voided at the gateway instead of
    charged; canceled during the charge, a capture is refunded in a fourth step, as is any
    payment a crash left refunding.
    """
    orders = [(envelope, envelope.event(OrderCreated)) for envelope in batch.envelopes]
    payments, checks = _open_payments(batch, orders)
    refunding = [p for p in payments.values() if p.status == PaymentStatus.REFUNDING]
    charging = {order_id: p for order_id, p in payments.items() if p.status == PaymentStatus.CHARGING}
    if charging:
        gateway = get_gateway()
        results = {order_id: _charge_or_void(gateway, payment) for order_id, payment in charging.items()}
        with transaction.atomic(), outbox_collected():
            fresh = batch.claim([envelope for envelope, order in orders if order.order_id in results])
            # Locked, and still charging: another event of the same order may have recorded it first.
            still_charging = Payment.lock_in_status(
                [charging[e.aggregate_id].pk for e in fresh], PaymentStatus.CHARGING
            )
            for envelope, _ in batch.each(fresh, OrderCreated):
                payment = charging[envelope.aggregate_id]
                if payment.pk in still_charging and payment.status == PaymentStatus.CHARGING:
                    # (Not yet recorded by another event of the same order, earlier in this batch.)
                    payment.cancel_requested = still_charging[payment.pk]
                    _record_outcome(payment, results[envelope.aggregate_id], checks[envelope.aggregate_id])
                    if payment.status == PaymentStatus.REFUNDING:
                        refunding.append(payment)
    _refund(batch, refunding)


def _charge_or_void(gateway: PaymentGateway, payment: Payment) -> ChargeResult:
    """Step 2 for one payment: charge it; or, canceled since (a retry, a replay), void its key instead.

    An earlier attempt may have reached the gateway before it failed, so billing cannot know that
    nothing was charged; voiding the key settles it at the gateway: nothing is ever charged under
    it, or the earlier charge comes back (captured, then refunded).
    """
    if payment.cancel_requested:
        return gateway.void(idempotency_key=payment.idempotency_key, amount=payment.amount, currency=payment.currency)
    return gateway.charge(
        idempotency_key=payment.idempotency_key, amount=payment.amount, currency=payment.currency, buyer=payment.buyer
    )


def billing_cancel_orders(batch: EventBatch) -> None:
    """Cancel each order's payment: void it if nothing was charged, refund it if it was.

    The payment row orders every event of one order, whatever their arrival:
    1. (transaction) per order, locked: no payment yet (the cancellation overtook OrderCreated)
       -> a VOIDED tombstone and PaymentVoided; CHARGING (a charge in flight) -> marked
       `cancel_requested`, and the charging flow refunds the capture; CAPTURED -> REFUNDING;
       already declined, blocked, voided or refunded -> nothing to do. The inbox rows too.
    2. the refunds, outside any transaction, each under the payment's refund key;
    3. (transaction) each refund's outcome and PaymentRefunded.
    A redelivery, or a retry after a refund outage, finds the payment REFUNDING and resumes at 2.
    """
    requests = {}
    for envelope in batch.envelopes:
        requests.setdefault(envelope.aggregate_id, envelope.event(OrderCancelRequested))
    with transaction.atomic(), outbox_collected():
        tombstones = {
            order_id: Payment.open(
                order_id=order_id, amount=Decimal(request.amount), currency=request.currency, buyer=request.buyer
            )
            for order_id, request in requests.items()
        }
        voided = Payment.open_unless_billed(list(tombstones.values()), status=PaymentStatus.VOIDED)
        existing = Payment.objects.select_for_update().filter(order_id__in=[o for o in requests if o not in voided])
        payments = {order_id: tombstones[order_id] for order_id in voided}
        payments.update((str(p.order_id), p) for p in existing.order_by("pk"))
        fresh = batch.claim(batch.envelopes)
        canceled = set()
        for envelope, _ in batch.each(fresh, OrderCancelRequested):
            if envelope.aggregate_id not in canceled:  # two events of one order in a batch: cancel once
                canceled.add(envelope.aggregate_id)
                _cancel(payments[envelope.aggregate_id], voided=envelope.aggregate_id in voided)
    _refund(batch, [p for p in payments.values() if p.status == PaymentStatus.REFUNDING])


def _cancel(payment: Payment, *, voided: bool) -> None:
    """Step 1 of a cancellation for one locked payment."""
    if voided:
        payment.void()
        payment.save(update_fields=["outcome_reason", "updated_at"])
        logger.info("billing: order %s canceled before payment: voided", payment.order_id)
    elif payment.status == PaymentStatus.CHARGING:
        payment.cancel_requested = True
        payment.save(update_fields=["cancel_requested", "updated_at"])
        logger.info("billing: order %s canceled while charging: a capture will be refunded", payment.order_id)
    elif payment.status == PaymentStatus.CAPTURED:
        payment.request_refund()
        payment.save(update_fields=["status", "cancel_requested", "updated_at"])
    else:
        logger.info("billing: order %s canceled: payment is %s, nothing to do", payment.order_id, payment.status)


def _refund(batch: EventBatch, payments: list[Payment]) -> None:
    """Refund these REFUNDING payments at the gateway, then record each (PaymentRefunded).

    Each refund is sent under the payment's own refund key, so a repeat after a crash refunds
    nothing twice. A refund the gateway refuses is no business outcome: the payment stays
    REFUNDING and the message fails for good, for an operator to look at (and replay).
    """
    if not payments:
        return
    gateway = get_gateway()
    results = {
        payment.pk: gateway.refund(
            idempotency_key=payment.refund_idempotency_key,
            charge_reference=payment.gateway_reference,
            amount=payment.amount,
            currency=payment.currency,
        )
        for payment in payments
    }
    refused = [(p, results[p.pk]) for p in payments if not results[p.pk].succeeded]
    envelope_of = {}
    for envelope in batch.envelopes:
        envelope_of.setdefault(envelope.aggregate_id, envelope)
    with transaction.atomic(), outbox_collected():
        # Locked, and still refunding: a copy of the same event may have recorded it first.
        still_refunding = Payment.lock_in_status(
            [p.pk for p in payments if results[p.pk].succeeded], PaymentStatus.REFUNDING
        )
        for payment in payments:
            if payment.pk not in still_refunding:
                continue
            # PaymentRefunded names the event that led to the refund as its cause.
            with handling_event(envelope_of[str(payment.order_id)]):
                payment.refunded(refund_reference=results[payment.pk].reference)
                payment.save(update_fields=["status", "refund_reference", "outcome_reason", "updated_at"])
                logger.info("billing: order %s refunded: %s", payment.order_id, payment.refund_reference)
    if refused:
        raise PermanentError(
            "; ".join(f"order {p.order_id}: the gateway refused the refund: {r.failure_reason}" for p, r in refused)
        )


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
    """Step 3 for one payment, locked: captured or declined, with its outcome event.

    A capture of an order canceled meanwhile goes on to REFUNDING: its refund follows at once; a
    key voided at the gateway ends the payment VOIDED.
    """
    if result.voided:
        payment.void()
    elif result.succeeded:
        payment.capture(gateway_reference=result.reference, fraud_score=check.score, fraud_reasons=check.reasons)
        if payment.cancel_requested:
            payment.request_refund()
    else:
        payment.decline(reason=result.decline_reason, fraud_score=check.score, fraud_reasons=check.reasons)
    payment.save(update_fields=["status", "gateway_reference", "outcome_reason", "updated_at"])
    logger.info("billing: order %s %s", payment.order_id, payment.status)
