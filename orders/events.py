"""Events orders publishes: its contract with the other apps."""

from dataclasses import dataclass

from ordering import catalogue
from ordering.messaging.envelope import DomainEvent


@dataclass(frozen=True)
class OrderCreated(DomainEvent):
    """An order was accepted and waits for billing. Money fields are decimal strings."""

    event_type = catalogue.ORDER_CREATED
    version = 1

    product_name: str
    quantity: int
    unit_price: str
    amount: str
    currency: str
    buyer: str  # an email address, normalized (normalize_buyer)
    created_at: str


def normalize_buyer(address: str) -> str:
    """The one spelling of a buyer's address that every app stores and compares: trimmed, lower case.

    Strictly, the part before the @ may be case-sensitive; no real mail provider treats it so,
    and comparing exact spellings let `MALLORY@EXAMPLE.COM` pass where `mallory@example.com` is
    blocked.
    """
    return address.strip().lower()


@dataclass(frozen=True)
class OrderCancelRequested(DomainEvent):
    """The order's owner (or staff) asked to cancel it; billing voids or refunds its payment.

    It carries what billing needs to open the payment itself: a cancellation can reach billing
    before the order's OrderCreated does, and billing then records the payment as void so the
    late OrderCreated charges nothing.
    """

    event_type = catalogue.ORDER_CANCEL_REQUESTED
    version = 1

    amount: str
    currency: str
    buyer: str
    requested_at: str
    requested_by: str  # "api" or "admin", and the user's id: "api:42"
