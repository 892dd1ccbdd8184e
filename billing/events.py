"""Events billing publishes: one per outcome of billing an order."""

from dataclasses import dataclass

from ordering import catalogue
from ordering.messaging.envelope import DomainEvent


@dataclass(frozen=True)
class PaymentCaptured(DomainEvent):
    """The buyer was charged `amount` (decimal string) once; the order is paid."""

    event_type = catalogue.PAYMENT_CAPTURED
    version = 1

    payment_id: str
    amount: str
    currency: str
    gateway_reference: str


@dataclass(frozen=True)
class PaymentDeclined(DomainEvent):
    """The gateway refused the charge (a business outcome, not a technical failure)."""

    event_type = catalogue.PAYMENT_DECLINED
    version = 1

    payment_id: str
    reason: str


@dataclass(frozen=True)
class PaymentBlocked(DomainEvent):
    """Fraud rejected the order: nothing was charged; reasons name the fraud rules hit."""

    event_type = catalogue.PAYMENT_BLOCKED
    version = 1

    payment_id: str
    reasons: list
