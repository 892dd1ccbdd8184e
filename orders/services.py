"""Order services: create an order, apply the outcomes other apps report about it."""

import logging
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django_fsm import TransitionNotAllowed

from ordering.messaging.context import current_correlation_id
from ordering.messaging.envelope import Envelope
from ordering.messaging.errors import PermanentError
from ordering.messaging.inbox import inbox_record
from orders.models import Order, OrderStatus

logger = logging.getLogger(__name__)


@transaction.atomic
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
    # Field rules only: the unique and check constraints are the database's to enforce, and
    # validating them here costs a query each on the request path.
    order.full_clean(validate_unique=False, validate_constraints=False)
    order.stage_created()
    order.save()
    logger.info("order %s created for %s: %s %s", order.id, buyer, order.amount, currency)
    return order


def order_apply_outcome(*, consumer: str, envelope: Envelope, target: OrderStatus, **details: str) -> None:
    """Move an order to the terminal status billing reported; idempotent on the event id.

    A duplicate event does nothing. A stale one (the order already left PENDING) is acknowledged
    and logged: the status machine refuses any move that is not forward from PENDING.
    """
    with transaction.atomic():
        if not inbox_record(consumer=consumer, envelope=envelope):
            logger.info(
                "order %s: duplicate %s %s ignored", envelope.aggregate_id, envelope.event_type, envelope.event_id
            )
            return
        order = _order_for_update(envelope.aggregate_id)
        transition = {
            OrderStatus.PROCESSED: order.mark_processed,
            OrderStatus.CANCELED_FRAUD: order.mark_canceled_fraud,
            OrderStatus.PAYMENT_DECLINED: order.mark_payment_declined,
        }[target]
        try:
            transition(**details)
        except TransitionNotAllowed:
            logger.warning(
                "order %s: stale %s ignored: order is %s, refusing move to %s",
                order.id,
                envelope.event_type,
                order.status,
                target,
            )
            return
        order.save()
        logger.info("order %s: %s", order.id, order.status)


def order_record_fraud_decision(
    *, consumer: str, envelope: Envelope, decision: str, score: int, reasons: list[str]
) -> None:
    """Keep fraud's decision on the order for the API and the admin; idempotent on the event id."""
    with transaction.atomic():
        if not inbox_record(consumer=consumer, envelope=envelope):
            return
        order = _order_for_update(envelope.aggregate_id)
        order.fraud_decision = decision
        order.fraud_score = score
        order.fraud_reasons = reasons
        order.save(update_fields=["fraud_decision", "fraud_score", "fraud_reasons", "updated_at"])


def _order_for_update(order_id: str) -> Order:
    try:
        return Order.objects.select_for_update().get(pk=order_id)
    except (Order.DoesNotExist, ValueError) as exc:
        raise PermanentError(f"order {order_id} does not exist") from exc
