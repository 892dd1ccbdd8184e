"""Billing's consumer of new orders.

Idempotency key: (task name, event id) in the inbox, plus one Payment per order and the
gateway's idempotency key per payment. Side effects: a FraudCheck, a Payment, at most one
charge at the gateway, and one outcome event (captured, declined or blocked).
"""

from billing.services import billing_handle_order_created
from ordering import catalogue
from ordering.messaging.consumer import event_consumer
from ordering.messaging.envelope import Envelope


@event_consumer(name=catalogue.BILLING_HANDLE_ORDER_CREATED, event_type=catalogue.ORDER_CREATED)
def handle_order_created(envelope: Envelope, consumer: str) -> None:
    billing_handle_order_created(consumer=consumer, envelope=envelope)
