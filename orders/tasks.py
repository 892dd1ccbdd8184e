"""Orders' consumers: apply fraud decisions and payment outcomes to the order.

Idempotency key of each: (task name, event id) in the inbox. Side effect: the order row only.
"""

from billing.events import PaymentBlocked, PaymentCaptured, PaymentDeclined
from fraud.events import FraudCheckCompleted
from ordering import catalogue
from ordering.messaging.consumer import event_consumer
from ordering.messaging.envelope import Envelope
from orders import services
from orders.models import OrderStatus


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED, event_type=catalogue.PAYMENT_CAPTURED)
def handle_payment_captured(envelope: Envelope, consumer: str) -> None:
    """Order -> PROCESSED."""
    event = envelope.event(PaymentCaptured)
    services.order_apply_outcome(
        consumer=consumer,
        envelope=envelope,
        target=OrderStatus.PROCESSED,
        payment_reference=event.gateway_reference,
    )


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_DECLINED, event_type=catalogue.PAYMENT_DECLINED)
def handle_payment_declined(envelope: Envelope, consumer: str) -> None:
    """Order -> PAYMENT_DECLINED."""
    event = envelope.event(PaymentDeclined)
    services.order_apply_outcome(
        consumer=consumer,
        envelope=envelope,
        target=OrderStatus.PAYMENT_DECLINED,
        reason=event.reason,
    )


@event_consumer(name=catalogue.ORDERS_HANDLE_PAYMENT_BLOCKED, event_type=catalogue.PAYMENT_BLOCKED)
def handle_payment_blocked(envelope: Envelope, consumer: str) -> None:
    """Order -> CANCELED_FRAUD."""
    event = envelope.event(PaymentBlocked)
    services.order_apply_outcome(
        consumer=consumer,
        envelope=envelope,
        target=OrderStatus.CANCELED_FRAUD,
        reason=", ".join(event.reasons),
    )


@event_consumer(name=catalogue.ORDERS_HANDLE_FRAUD_CHECK_COMPLETED, event_type=catalogue.FRAUD_CHECK_COMPLETED)
def handle_fraud_check_completed(envelope: Envelope, consumer: str) -> None:
    """Copy fraud's decision onto the order."""
    event = envelope.event(FraudCheckCompleted)
    services.order_record_fraud_decision(
        consumer=consumer,
        envelope=envelope,
        decision=event.decision,
        score=event.score,
        reasons=event.reasons,
    )
