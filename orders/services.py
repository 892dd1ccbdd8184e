"""Order services: create an order, apply the outcomes other apps report about it, re-drive stuck ones."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from ordering import catalogue
from ordering.messaging.context import concerns_order, current_correlation_id
from ordering.messaging.errors import PermanentError
from ordering.messaging.models import OutboxEvent
from ordering.messaging.outbox import outbox_republish
from orders import metrics
from orders.models import CANCELABLE_STATUSES, Order, OrderStatus
from orders.selectors import StuckState, order_list_stuck_classified

logger = logging.getLogger(__name__)


# No savepoint: the API calls it inside the transaction that also renders its response.
@transaction.atomic(savepoint=False)
def order_create(
    *,
    owner: AbstractBaseUser,
    product_name: str,
    quantity: int,
    price: Decimal,
    currency: str,
    buyer: str,
) -> Order:
    """Accept an order (PENDING) and record OrderCreated in the outbox, in one transaction."""
    order = Order(
        owner=owner,
        product_name=product_name,
        quantity=quantity,
        price=price,
        currency=currency,
        buyer=buyer,
        correlation_id=current_correlation_id(),
    )
    # No full_clean(): the API's serializer has checked every field against the same rules, and
    # the database enforces them all again (check constraints, lengths, the owner's foreign
    # key), whoever the caller; checking a third time costs more than the insert.
    order.stage_created()
    order.save()
    metrics.order_count_created(order=order)
    concerns_order(order.id)
    # Ids only: a log line carries no personal data (the buyer stays in the database).
    logger.info("order %s created by user %s: %s %s", order.id, owner.pk, order.amount, currency)
    return order


@dataclass(frozen=True)
class FraudOutcome:
    """Fraud's decision on an order, as billing's outcome event reports it."""

    decision: str
    score: int
    reasons: list[str]


# The transitions below run inside a consumer's transaction (after its inbox row); on their own
# they open one. No savepoint: a failure fails the consumer's whole transaction, as it must.


@transaction.atomic(savepoint=False)
def order_mark_processed(
    *,
    order_id: str,
    payment_reference: str,
    amount: Decimal,
    currency: str,
    fraud: FraudOutcome | None = None,
) -> None:
    """PENDING -> PROCESSED: billing captured the payment, of exactly the order's amount and currency.

    A capture of any other amount or currency is not this order's payment (a forged or broken
    event): it fails permanently and is dead-lettered, for an operator to look at.
    """

    def capture(order: Order) -> None:
        _require_order_amount(order, "captured", amount, currency)
        if order.status == OrderStatus.CANCELING:
            # Charged while the cancellation was on its way: billing refunds it, and its
            # PaymentRefunded ends the order. Keep the reference meanwhile, for operators.
            order.payment_reference = payment_reference
            return
        order.mark_processed(payment_reference=payment_reference)

    _transition(order_id, "PROCESSED", capture, fraud)


@transaction.atomic(savepoint=False)
def order_mark_payment_declined(*, order_id: str, reason: str, fraud: FraudOutcome | None = None) -> None:
    """PENDING -> PAYMENT_DECLINED: the gateway refused the charge."""
    _transition(order_id, "PAYMENT_DECLINED", lambda order: order.mark_payment_declined(reason=reason), fraud)


@transaction.atomic(savepoint=False)
def order_mark_canceled_fraud(*, order_id: str, reason: str, fraud: FraudOutcome | None = None) -> None:
    """PENDING -> CANCELED_FRAUD: fraud rejected the order, nothing was charged."""
    _transition(order_id, "CANCELED_FRAUD", lambda order: order.mark_canceled_fraud(reason=reason), fraud)


@transaction.atomic(savepoint=False)
def order_mark_canceled(*, order_id: str) -> None:
    """CANCELING -> CANCELED: billing voided the payment before anything was charged."""
    _transition(order_id, "CANCELED", lambda order: order.mark_canceled(), None)


@transaction.atomic(savepoint=False)
def order_mark_refunded(
    *, order_id: str, payment_reference: str, refund_reference: str, amount: Decimal, currency: str
) -> None:
    """CANCELING -> REFUNDED: billing refunded the captured payment in full.

    A refund of any other amount or currency is not this order's (a forged or broken event): it
    fails permanently and is dead-lettered, as a capture would.
    """

    def refund(order: Order) -> None:
        _require_order_amount(order, "refunded", amount, currency)
        order.mark_refunded(payment_reference=payment_reference, refund_reference=refund_reference)

    _transition(order_id, "REFUNDED", refund, None)


def _require_order_amount(order: Order, what: str, amount: Decimal, currency: str) -> None:
    if (amount, currency) != (order.amount, order.currency):
        raise PermanentError(
            f"order {order.id}: {what} {amount} {currency} does not match the order's {order.amount} {order.currency}"
        )


class OrderNotCancelable(Exception):
    """The order is over (declined, blocked by fraud, canceled or refunded): nothing left to cancel."""

    def __init__(self, order: Order) -> None:
        super().__init__(f"order {order.id} is {order.status} and can no longer be canceled")
        self.order = order


# No savepoint: the API calls it inside the transaction that also renders its response.
@transaction.atomic(savepoint=False)
def order_request_cancel(*, order_id: uuid.UUID | str, requested_by: str) -> Order:
    """Ask billing to cancel the order: PENDING or PROCESSED -> CANCELING, with OrderCancelRequested.

    Idempotent: an order already CANCELING (a repeat, or two requests at once: they serialise on
    the order's row) is returned as it is, with no second event. An order that is over raises
    OrderNotCancelable. `requested_by` says who asked, e.g. "api:42" or "admin:7".
    """
    order = Order.objects.select_for_update().select_related("owner").get(pk=order_id)
    if order.status == OrderStatus.CANCELING:
        return order
    if order.status not in CANCELABLE_STATUSES:
        raise OrderNotCancelable(order)
    concerns_order(order.id)
    order.request_cancel(requested_by=requested_by)
    order.save(update_fields=["status", "cancel_requested_at", "updated_at"])
    logger.info("order %s: cancellation requested by %s", order.id, requested_by)
    return order


@transaction.atomic(savepoint=False)
def order_record_fraud_decision(*, order_id: str, fraud: FraudOutcome) -> None:
    """Keep fraud's decision on the order (from a version 1 FraudCheckCompleted)."""
    order = _order_for_update(order_id)
    order.record_fraud_decision(decision=fraud.decision, score=fraud.score, reasons=fraud.reasons)
    order.save(update_fields=[*FRAUD_FIELDS, "updated_at"])


FRAUD_FIELDS = ["fraud_decision", "fraud_score", "fraud_reasons"]


def _transition(order_id: str, target: str, move: Callable[[Order], None], fraud: FraudOutcome | None) -> None:
    """Apply `move` (a guarded transition), with fraud's decision if reported, and save what changed.

    An outcome that comes too late (the order is already over) is stale: acknowledged and logged,
    never applied; the status machine refuses every move it does not list (orders/models.py).
    """
    order = _order_for_update(order_id)
    try:
        move(order)
    except TransitionNotAllowed:
        logger.warning(
            "order %s: stale outcome ignored: order is %s, refusing move to %s", order.id, order.status, target
        )
        return
    # Only what the move set: a field still deferred (_order_for_update) would cost a query to save.
    deferred = order.get_deferred_fields()
    changeable = ("status", "status_reason", "payment_reference", "refund_reference")
    # updated_at: auto_now, set by save() itself.
    fields = [*(name for name in changeable if name not in deferred), "updated_at"]
    if fraud is not None:
        order.record_fraud_decision(decision=fraud.decision, score=fraud.score, reasons=fraud.reasons)
        fields += FRAUD_FIELDS
    order.save(update_fields=fields)
    if order.is_terminal:
        metrics.order_count_terminal(order=order)
    logger.info("order %s: %s", order.id, order.status)


def _order_for_update(order_id: str) -> Order:
    """The order's id, status and amount, locked to the end of the transaction; other fields load if used.

    A plain query: every outcome runs it, and the transitions need no more than these.
    """
    try:
        pk = uuid.UUID(order_id)
    except (ValueError, TypeError, AttributeError) as exc:
        raise PermanentError(f"order {order_id!r} does not exist") from exc
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_ORDER_SQL, [pk])
        row = cursor.fetchone()
    if row is None:
        raise PermanentError(f"order {order_id} does not exist")
    return Order.from_db(connection.alias, _LOCKED_FIELDS, row)


# Columns in the model's field order, as Model.from_db() takes them (created_at: the latency metric).
_LOCKED_FIELDS = ["id", "quantity", "price", "currency", "status", "created_at"]
_LOCK_ORDER_SQL = f"SELECT {', '.join(_LOCKED_FIELDS)} FROM {Order._meta.db_table} WHERE id = %s FOR UPDATE"


@dataclass(frozen=True)
class Redrive:
    """One stuck order the watchdog sent on its way again."""

    order_id: str
    event_type: str
    event_ids: tuple[uuid.UUID, ...]
    # Published again under their own ids (True), or the creation event recorded anew (False).
    republished: bool


def order_redrive_missing(*, older_than: timedelta) -> list[Redrive]:
    """Re-drive every stuck order whose events went missing (StuckState.MISSING); leave the others.

    Stuck is PENDING or CANCELING (orders/selectors.py): a CANCELING order's unhandled events are
    published again like a PENDING one's (its cancellation, billing's void or refund); only a PENDING
    order's creation event is ever recorded anew. In flight ones are on their way; dead-lettered
    ones wait for an operator's replay. Each order is re-driven in its own transaction, locked and
    classified again first, so two runs at once (two beats by mistake, a manual run) re-drive it once.
    """
    redriven = []
    for stuck in order_list_stuck_classified(older_than=older_than):
        if stuck.state is StuckState.MISSING:
            redrive = _order_redrive(order_id=stuck.order_id, older_than=older_than)
            if redrive is not None:
                redriven.append(redrive)
    return redriven


@transaction.atomic
def _order_redrive(*, order_id: str, older_than: timedelta) -> Redrive | None:
    order = Order.objects.select_for_update().get(pk=order_id)
    again = order_list_stuck_classified(older_than=older_than, order_ids=[order_id])
    if not again or again[0].state is not StuckState.MISSING:
        return None  # no longer stuck, or another run re-drove it meanwhile
    stuck = again[0]
    waiting_seconds = (timezone.now() - stuck.since).total_seconds()
    if stuck.unconsumed_events:
        # Same event ids: a consumer that handled one after all drops the copy (its inbox).
        event_ids = tuple(event_id for event_id, _ in stuck.unconsumed_events)
        outbox_republish(list(event_ids))
        redrive = Redrive(order_id, stuck.unconsumed_events[0][1], event_ids, republished=True)
    elif stuck.needs_creation_event:
        # A new event id, and still at most one charge: billing opens one payment per order
        # (unique order_id, ON CONFLICT) and the gateway charges its key `order-<id>` once
        # (billing/models.py Payment), whatever the event id of the OrderCreated it handles.
        order.stage_created()
        order.save(update_fields=["updated_at"])
        event_id = (
            OutboxEvent.objects.filter(aggregate_id=order_id, event_type=catalogue.ORDER_CREATED)
            .order_by("-created_at")
            .values_list("id", flat=True)
            .first()
        )
        redrive = Redrive(order_id, catalogue.ORDER_CREATED, (event_id,), republished=False)
    else:
        logger.error(
            "order %s: %s for %d s, nothing to re-drive: %s", order_id, stuck.status, waiting_seconds, stuck.detail
        )
        return None
    logger.warning(
        "order %s: %s event missing after %d s; re-driven as event %s%s",
        order_id,
        _event_name(redrive.event_type),
        waiting_seconds,
        ", ".join(str(event_id) for event_id in redrive.event_ids),
        " (published again)" if redrive.republished else "",
    )
    return redrive


def _event_name(event_type: str) -> str:
    """'orders.order.created' -> 'order_created', as operators name events."""
    return "_".join(event_type.split(".")[1:])
