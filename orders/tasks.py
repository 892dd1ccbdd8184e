"""Orders' consumers: apply billing's outcomes (with fraud's decision), voids and refunds to the order; the watchdog.

Idempotency key of each: (task name, event id) in the inbox, recorded by the consumer machinery
in the transaction of the change. Side effect: the order row only.

Version 1 outcomes (published before the outcome carried fraud's decision) are still applied;
their fraud decision arrives by FraudCheckCompleted, whose consumer stays for as long as such
messages may be queued.
"""

from datetime import timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings

from billing.events import (
    PaymentBlocked,
    PaymentBlockedV1,
    PaymentCaptured,
    PaymentCapturedV1,
    PaymentDeclined,
    PaymentDeclinedV1,
    PaymentRefunded,
    PaymentVoided,
)
from fraud.events import FraudCheckCompleted
from ordering import catalogue
from ordering.celery import maintenance_task
from ordering.messaging.consumer import event_consumer
from ordering.messaging.envelope import Envelope
from ordering.messaging.errors import InvalidPayload
from orders import services
from orders.services import FraudOutcome


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED, event_type=catalogue.PAYMENT_CAPTURED)
def handle_payment_captured(envelope: Envelope) -> None:
    """Order -> PROCESSED."""
    event = envelope.event(PaymentCaptured, PaymentCapturedV1)
    services.order_mark_processed(
        order_id=envelope.aggregate_id,
        payment_reference=event.gateway_reference,
        amount=_money(event.amount),
        currency=event.currency,
        fraud=_approved(event),
    )


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_DECLINED, event_type=catalogue.PAYMENT_DECLINED)
def handle_payment_declined(envelope: Envelope) -> None:
    """Order -> PAYMENT_DECLINED."""
    event = envelope.event(PaymentDeclined, PaymentDeclinedV1)
    services.order_mark_payment_declined(order_id=envelope.aggregate_id, reason=event.reason, fraud=_approved(event))


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_BLOCKED, event_type=catalogue.PAYMENT_BLOCKED)
def handle_payment_blocked(envelope: Envelope) -> None:
    """Order -> CANCELED_FRAUD."""
    event = envelope.event(PaymentBlocked, PaymentBlockedV1)
    if isinstance(event, PaymentBlockedV1):
        services.order_mark_canceled_fraud(order_id=envelope.aggregate_id, reason=", ".join(event.reasons))
        return
    services.order_mark_canceled_fraud(
        order_id=envelope.aggregate_id,
        reason=", ".join(event.fraud_reasons),
        fraud=FraudOutcome(decision="rejected", score=event.fraud_score, reasons=event.fraud_reasons),
    )


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_VOIDED, event_type=catalogue.PAYMENT_VOIDED)
def handle_payment_voided(envelope: Envelope) -> None:
    """Order CANCELING -> CANCELED."""
    envelope.event(PaymentVoided)
    services.order_mark_canceled(order_id=envelope.aggregate_id)


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_REFUNDED, event_type=catalogue.PAYMENT_REFUNDED)
def handle_payment_refunded(envelope: Envelope) -> None:
    """Order CANCELING -> REFUNDED."""
    event = envelope.event(PaymentRefunded)
    services.order_mark_refunded(
        order_id=envelope.aggregate_id,
        payment_reference=event.gateway_reference,
        refund_reference=event.refund_reference,
        amount=_money(event.amount),
        currency=event.currency,
    )


@event_consumer(name=catalogue.ORDERS_HANDLE_FRAUD_CHECK_COMPLETED, event_type=catalogue.FRAUD_CHECK_COMPLETED)
def handle_fraud_check_completed(envelope: Envelope) -> None:
    """Copy fraud's decision onto the order (version 1 outcomes only; no longer published)."""
    event = envelope.event(FraudCheckCompleted)
    services.order_record_fraud_decision(
        order_id=envelope.aggregate_id,
        fraud=FraudOutcome(decision=event.decision, score=event.score, reasons=event.reasons),
    )


@maintenance_task(catalogue.ORDERS_REDRIVE_STUCK_ORDERS)
def redrive_stuck_orders() -> int:
    """Periodic (beat): re-drive stuck orders whose events went missing; how many were."""
    stuck_after = timedelta(seconds=settings.WATCHDOG["STUCK_AFTER_SECONDS"])
    return len(services.order_redrive_missing(older_than=stuck_after))


def _approved(event: PaymentCaptured | PaymentDeclined | PaymentCapturedV1 | PaymentDeclinedV1) -> FraudOutcome | None:
    # Billing charges only what fraud approved.
    if isinstance(event, PaymentCapturedV1 | PaymentDeclinedV1):
        return None
    return FraudOutcome(decision="approved", score=event.fraud_score, reasons=event.fraud_reasons)


def _money(amount: str) -> Decimal:
    try:
        value = Decimal(amount)
    except InvalidOperation as exc:
        raise InvalidPayload(f"amount {amount!r} is not a decimal number") from exc
    if not value.is_finite():
        raise InvalidPayload(f"amount {amount!r} is not a finite number")
    return value
