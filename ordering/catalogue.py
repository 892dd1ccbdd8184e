"""The one registry of wire names: event types and versions, queues, consumer tasks, subscriptions.

Every string here is part of a contract with messages that may already sit in a queue or an
outbox table. Never rename or reuse one; add a new name (or a new version) and keep the old
handler until no old message can be left.
"""

from dataclasses import dataclass

# --- Event types (<app>.<aggregate>.<past participle>) and the versions consumers understand ---
ORDER_CREATED = "orders.order.created"
FRAUD_CHECK_COMPLETED = "fraud.check.completed"
PAYMENT_CAPTURED = "billing.payment.captured"
PAYMENT_DECLINED = "billing.payment.declined"
PAYMENT_BLOCKED = "billing.payment.blocked"
ORDER_CANCEL_REQUESTED = "orders.order.cancel_requested"
PAYMENT_VOIDED = "billing.payment.voided"
PAYMENT_REFUNDED = "billing.payment.refunded"

# Versions published today are the highest of each type; older ones are still consumed.
# FRAUD_CHECK_COMPLETED is no longer published (the outcome events carry fraud's decision).
EVENT_VERSIONS: dict[str, frozenset[int]] = {
    ORDER_CREATED: frozenset({1}),
    FRAUD_CHECK_COMPLETED: frozenset({1}),
    PAYMENT_CAPTURED: frozenset({1, 2}),
    PAYMENT_DECLINED: frozenset({1, 2}),
    PAYMENT_BLOCKED: frozenset({1, 2}),
    ORDER_CANCEL_REQUESTED: frozenset({1}),
    PAYMENT_VOIDED: frozenset({1}),
    PAYMENT_REFUNDED: frozenset({1}),
}

# --- RabbitMQ names ----------------------------------------------------------------------------
EVENTS_EXCHANGE = "ordering.events"
DEAD_LETTER_EXCHANGE = "ordering.dlx"
BILLING_QUEUE = "billing.events"
ORDERS_QUEUE = "orders.events"
CONSUMER_QUEUES = (BILLING_QUEUE, ORDERS_QUEUE)
# The periodic jobs Celery beat sends (watchdog, retention): no event consumers, no dead-letter queue.
MAINTENANCE_QUEUE = "ordering.maintenance"


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue that collects what `queue` rejects."""
    return f"{queue}.dlq"


# --- Consumer tasks ----------------------------------------------------------------------------
BILLING_HANDLE_ORDER_CREATED = "billing.handle_order_created"
BILLING_HANDLE_ORDER_CANCEL_REQUESTED = "billing.handle_order_cancel_requested"
ORDERS_HANDLE_FRAUD_CHECK_COMPLETED = "orders.handle_fraud_check_completed"
ORDERS_HANDLE_PAYMENT_CAPTURED = "orders.handle_payment_captured"
ORDERS_HANDLE_PAYMENT_DECLINED = "orders.handle_payment_declined"
ORDERS_HANDLE_PAYMENT_BLOCKED = "orders.handle_payment_blocked"
ORDERS_HANDLE_PAYMENT_VOIDED = "orders.handle_payment_voided"
ORDERS_HANDLE_PAYMENT_REFUNDED = "orders.handle_payment_refunded"


@dataclass(frozen=True)
class Subscription:
    """One consumer task that receives every event of one type, on its app's queue."""

    event_type: str
    task_name: str
    queue: str


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription(ORDER_CREATED, BILLING_HANDLE_ORDER_CREATED, BILLING_QUEUE),
    Subscription(FRAUD_CHECK_COMPLETED, ORDERS_HANDLE_FRAUD_CHECK_COMPLETED, ORDERS_QUEUE),
    Subscription(PAYMENT_CAPTURED, ORDERS_HANDLE_PAYMENT_CAPTURED, ORDERS_QUEUE),
    Subscription(PAYMENT_DECLINED, ORDERS_HANDLE_PAYMENT_DECLINED, ORDERS_QUEUE),
    Subscription(PAYMENT_BLOCKED, ORDERS_HANDLE_PAYMENT_BLOCKED, ORDERS_QUEUE),
    Subscription(ORDER_CANCEL_REQUESTED, BILLING_HANDLE_ORDER_CANCEL_REQUESTED, BILLING_QUEUE),
    Subscription(PAYMENT_VOIDED, ORDERS_HANDLE_PAYMENT_VOIDED, ORDERS_QUEUE),
    Subscription(PAYMENT_REFUNDED, ORDERS_HANDLE_PAYMENT_REFUNDED, ORDERS_QUEUE),
)


def subscriptions_for(event_type: str) -> tuple[Subscription, ...]:
    """The subscriptions an event of this type is delivered to (one task message each)."""
    return tuple(s for s in SUBSCRIPTIONS if s.event_type == event_type)


def queue_of_task(task_name: str) -> str:
    """The queue a consumer task listens on."""
    for subscription in SUBSCRIPTIONS:
        if subscription.task_name == task_name:
            return subscription.queue
    raise KeyError(f"no subscription for task {task_name!r}")


# --- Periodic tasks (Celery beat), on MAINTENANCE_QUEUE --------------------------------------------
ORDERS_REDRIVE_STUCK_ORDERS = "orders.redrive_stuck_orders"
MESSAGING_PURGE_EXPIRED = "messaging.purge_expired"
IDEMPOTENCY_PURGE_EXPIRED_KEYS = "idempotency.purge_expired_keys"
MAINTENANCE_TASKS = (ORDERS_REDRIVE_STUCK_ORDERS, MESSAGING_PURGE_EXPIRED, IDEMPOTENCY_PURGE_EXPIRED_KEYS)
