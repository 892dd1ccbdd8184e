"""Billing's consumer of new orders.

Idempotency key: (task name, event id) in the inbox, plus one Payment per order and the
gateway's idempotency key per payment. Side effects: a FraudCheck, a Payment, at most one
charge at the gateway, and one outcome event (captured, declined or blocked).
"""

from billing.services import billing_bill_orders
from ordering import catalogue
from ordering.messaging.consumer import EventBatch, event_consumer


@event_consumer(name=catalogue.BILLING_HANDLE_ORDER_CREATED, event_type=catalogue.ORDER_CREATED, transactional=False)
def handle_order_created(batch: EventBatch) -> None:
    # Not transactional: the gateway call sits between billing's two transactions, and the
    # service claims the inbox rows in the transaction of each outcome.
    billing_bill_orders(batch)
