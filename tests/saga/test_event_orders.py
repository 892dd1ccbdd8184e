"""The saga's outcome does not depend on the order its events arrive in.

Billing's events of one order (created, cancel_requested) can be consumed in either order by
different workers, and orders' inputs (billing's outcomes) in any order too, with stale copies
after a replay. For each way a cancellation can meet an order, every arrival order that can
happen ends in the same order status with the same money moved at the gateway. Which of CANCELED
or REFUNDED it ends in depends on one fact only: whether billing had charged before the
cancellation reached it, the difference those two statuses report.
"""

import itertools
from decimal import Decimal

import pytest

from billing.models import Payment, PaymentStatus
from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from orders.events import OrderCancelRequested
from orders.models import Order, OrderStatus
from orders.services import order_request_cancel
from tests.conftest import envelope_for, make_order
from tests.consumers import deliver
from tests.saga.pipeline import Pipeline, gateway_requests, money_moved

pytestmark = pytest.mark.django_db(transaction=True)

DECLINED_PRICE = Decimal("6000.00")  # above SIMULATED_GATEWAY_DECLINE_ABOVE


def final_state(order_id) -> tuple[str, Decimal, tuple[int, int]]:
    return Order.objects.get(pk=order_id).status, money_moved(order_id), gateway_requests(order_id)


def consume_in(pipeline: Pipeline, names: tuple[str, ...]) -> None:
    for name in names:
        pipeline.consume(name)


@pytest.mark.parametrize("billing_order", [("created", "cancel_requested"), ("cancel_requested", "created")])
@pytest.mark.parametrize("outcomes_reversed", [False, True])
def test_a_cancellation_before_billing_saw_the_order_moves_no_money_in_any_order(
    user, billing_order, outcomes_reversed
):
    order = make_order(user)
    order_request_cancel(order_id=order.id, requested_by="test")
    pipeline = Pipeline(str(order.id))
    # Billing consumes both of its events first; what orders then gets depends on which came first.
    consume_in(pipeline, billing_order)
    outcomes = pipeline.waiting()
    consume_in(pipeline, tuple(reversed(outcomes)) if outcomes_reversed else tuple(outcomes))
    # A stale copy of every event, as a replay would deliver them: no effect.
    consume_in(pipeline, ("created", "cancel_requested", *outcomes))

    if billing_order[0] == "cancel_requested":
        assert sorted(outcomes) == ["voided"]
        assert final_state(order.id) == (OrderStatus.CANCELED, Decimal(0), (0, 0))
        assert Payment.objects.get(order_id=order.id).status == PaymentStatus.VOIDED
    else:
        assert sorted(outcomes) == ["captured", "refunded"]
        assert final_state(order.id) == (OrderStatus.REFUNDED, Decimal(0), (1, 1))


@pytest.mark.parametrize("outcome_order", list(itertools.permutations(["captured", "refunded"])))
def test_a_cancellation_after_capture_refunds_once_whatever_orders_hears_first(user, outcome_order):
    order = make_order(user)
    pipeline = Pipeline(str(order.id))
    pipeline.consume("created")  # billing captures; orders has not heard yet
    order_request_cancel(order_id=order.id, requested_by="test")  # PENDING -> CANCELING
    pipeline.consume("cancel_requested")  # billing refunds
    consume_in(pipeline, outcome_order)
    consume_in(pipeline, ("created", "cancel_requested", *outcome_order))
    assert final_state(order.id) == (OrderStatus.REFUNDED, Decimal(0), (1, 1))
    refunded = Order.objects.get(pk=order.id)
    payment = Payment.objects.get(order_id=order.id)
    assert (refunded.payment_reference, refunded.refund_reference) == (
        payment.gateway_reference,
        payment.refund_reference,
    )


def test_a_processed_order_canceled_is_refunded(user):
    order = make_order(user)
    pipeline = Pipeline(str(order.id))
    pipeline.consume_all()
    assert final_state(order.id) == (OrderStatus.PROCESSED, order.amount, (1, 0))
    order_request_cancel(order_id=order.id, requested_by="test")
    pipeline.consume_all()
    assert final_state(order.id) == (OrderStatus.REFUNDED, Decimal(0), (1, 1))


@pytest.mark.parametrize("billing_order", [("created", "cancel_requested"), ("cancel_requested", "created")])
def test_a_declined_order_canceled_is_never_charged_in_any_order(user, billing_order):
    order = make_order(user, price=DECLINED_PRICE)
    order_request_cancel(order_id=order.id, requested_by="test")
    pipeline = Pipeline(str(order.id))
    consume_in(pipeline, billing_order)
    pipeline.consume_all()
    consume_in(pipeline, billing_order)
    expected = OrderStatus.PAYMENT_DECLINED if billing_order[0] == "created" else OrderStatus.CANCELED
    assert final_state(order.id) == (expected, Decimal(0), (0, 0))


def test_two_cancellation_events_of_one_order_in_one_batch_void_it_once(user):
    order = make_order(user)
    order_request_cancel(order_id=order.id, requested_by="test")
    first = Pipeline(str(order.id)).recorded()["cancel_requested"]
    copy = envelope_for(first.event(OrderCancelRequested))  # the same request under another event id
    deliver(catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED, first, copy)
    assert list(Pipeline(str(order.id)).recorded()) == ["created", "cancel_requested", "voided"]
    assert OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.PAYMENT_VOIDED).count() == 1
