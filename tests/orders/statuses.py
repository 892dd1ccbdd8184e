"""Orders put in each status by the services that do it in production, for tests that start from one."""

from collections.abc import Callable

from orders.models import Order, OrderStatus
from orders.services import (
    order_mark_canceled,
    order_mark_canceled_fraud,
    order_mark_payment_declined,
    order_mark_processed,
    order_mark_refunded,
    order_request_cancel,
)
from tests.conftest import make_order


def processed(order: Order) -> None:
    order_mark_processed(order_id=str(order.id), payment_reference="sim_1", amount=order.amount, currency="EUR")


def canceling(order: Order) -> None:
    order_request_cancel(order_id=order.id, requested_by="test")


def canceled(order: Order) -> None:
    canceling(order)
    order_mark_canceled(order_id=str(order.id))


def refunded(order: Order) -> None:
    processed(order)
    canceling(order)
    order_mark_refunded(
        order_id=str(order.id),
        payment_reference="sim_1",
        refund_reference="sim_re_1",
        amount=order.amount,
        currency=order.currency,
    )


SETUP: dict[str, Callable[[Order], None]] = {
    OrderStatus.PENDING: lambda order: None,
    OrderStatus.PROCESSED: processed,
    OrderStatus.CANCELING: canceling,
    OrderStatus.CANCELED: canceled,
    OrderStatus.REFUNDED: refunded,
    OrderStatus.PAYMENT_DECLINED: lambda order: order_mark_payment_declined(order_id=str(order.id), reason="no funds"),
    OrderStatus.CANCELED_FRAUD: lambda order: order_mark_canceled_fraud(order_id=str(order.id), reason="blocked"),
}


def order_in(user, status: str) -> Order:
    order = make_order(user)
    SETUP[status](order)
    order.refresh_from_db()
    assert order.status == status
    return order
