"""Events fraud has published: its contract with the other apps.

Fraud's decision now reaches orders inside billing's outcome event (billing/events.py), the one
route for that fact. FraudCheckCompleted is no longer published; orders keeps consuming it while
messages of it may still wait in a queue or an outbox table.
"""

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
