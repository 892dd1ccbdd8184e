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
    buyer: str
    created_at: str
