"""Events billing publishes: one per outcome of billing an order.

Each outcome carries fraud's decision on the order (score and the rules hit), so the decision
reaches orders by one route, with the outcome it led to. Version 1 of each type, from before
that, is still read by the consumers: such messages may wait in a queue or an outbox table.
"""

from dataclasses import dataclass

from ordering import catalogue
from ordering.messaging.envelope import DomainEvent


@dataclass(frozen=True)
class PaymentCaptured(DomainEvent):
    """The buyer was charged `amount` (decimal string) once; the order is paid. Fraud approved it."""

    event_type = catalogue.PAYMENT_CAPTURED
    version = 2

    payment_id: str
    amount: str
    currency: str
    gateway_reference: str
    fraud_score: int
    fraud_reasons: list


@dataclass(frozen=True)
class PaymentDeclined(DomainEvent):
    """The gateway refused the charge (a business outcome, not a technical failure). Fraud approved it."""

    event_type = catalogue.PAYMENT_DECLINED
    version = 2

    payment_id: str
    reason: str
    fraud_score: int
    fraud_reasons: list


@dataclass(frozen=True)
class PaymentBlocked(DomainEvent):
    """Fraud rejected the order: nothing was charged; fraud_reasons name the rules hit."""

    event_type = catalogue.PAYMENT_BLOCKED
    version = 2

    payment_id: str
    fraud_score: int
    fraud_reasons: list


# --- Version 1: no longer published, still consumed --------------------------------------------


@dataclass(frozen=True)
class PaymentCapturedV1(DomainEvent):
    event_type = catalogue.PAYMENT_CAPTURED
    version = 1

    payment_id: str
    amount: str
    currency: str
    gateway_reference: str


@dataclass(frozen=True)
class PaymentDeclinedV1(DomainEvent):
    event_type = catalogue.PAYMENT_DECLINED
    version = 1

    payment_id: str
    reason: str


@dataclass(frozen=True)
class PaymentBlockedV1(DomainEvent):
    event_type = catalogue.PAYMENT_BLOCKED
    version = 1

    payment_id: str
    reasons: list


# --- Cancellation: billing's answers to OrderCancelRequested ------------------------------------


@dataclass(frozen=True)
class PaymentVoided(DomainEvent):
    """The order was cancelled before anything was charged; it never will be."""

    event_type = catalogue.PAYMENT_VOIDED
    version = 1

    payment_id: str


@dataclass(frozen=True)
class PaymentRefunded(DomainEvent):
    """The captured `amount` was refunded in full, once; the order's money is back with the buyer."""

    event_type = catalogue.PAYMENT_REFUNDED
    version = 1

    payment_id: str
    amount: str
    currency: str
    gateway_reference: str  # the charge refunded
    refund_reference: str
