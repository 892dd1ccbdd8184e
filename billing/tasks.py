"""Billing's consumers: new orders, and their cancellations.

Idempotency key: (task name, event id) in the inbox, plus one Payment per order and the
gateway's idempotency keys per payment (one for its charge, one for its refund).
Side effects of a new order: a FraudCheck, a Payment, at most one charge at the gateway, and one
outcome event (captured, declined or blocked). Of a cancellation: a void Payment (PaymentVoided),
or at most one refund at the gateway (PaymentRefunded), or nothing when billing's outcome was
already a decline or a block.
"""

from billing.services import billing_bill_orders, billing_cancel_orders
from ordering import catalogue
from ordering.messaging.consumer import EventBatch, event_consumer


@event_consumer(name=catalogue.BILLING_HANDLE_ORDER_CREATED, event_type=catalogue.ORDER_CREATED, transactional=False)
def handle_order_created(batch: EventBatch) -> None:
    # Not transactional: the gateway call sits between billing's two transactions, and the
    # service claims the inbox rows in the transaction of each outcome.
    billing_bill_orders(batch)


@event_consumer(
    name=catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED,
    event_type=catalogue.ORDER_CANCEL_REQUESTED,
    transactional=False,
)
def handle_order_cancel_requested(batch: EventBatch) -> None:
    # Not transactional: a refund calls the gateway between billing's transactions.
    billing_cancel_orders(batch)
