"""Events fraud publishes: its contract with the other apps."""

from dataclasses import dataclass

from ordering import catalogue
from ordering.messaging.envelope import DomainEvent


@dataclass(frozen=True)
class FraudCheckCompleted(DomainEvent):
    """Fraud decided on an order: decision is "approved" or "rejected"; reasons name the rules hit."""

    event_type = catalogue.FRAUD_CHECK_COMPLETED
    version = 1

    decision: str
    score: int
    reasons: list
