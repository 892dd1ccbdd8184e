"""Cancellation on the real relay, workers, broker and gateway: every race ends with the money right.

Each test asks for a cancellation at a different moment of billing's work, or during a fault,
and checks the gateway's own ledger: a canceled order's charges minus refunds are zero, a charge
is refunded at most once, and nothing is charged after the cancellation voided the payment.
"""

import signal
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import (
    GatewayOperation,
    Payment,
    PaymentStatus,
    SimulatedGatewayOutage,
    SimulatedRefund,
)
from ordering import catalogue
from ordering.messaging import selectors
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from orders.services import order_request_cancel
from tests.commands import command_output
from tests.conftest import make_order
from tests.integration.conftest import reconfigured, wait_for_status
from tests.processes import wait_until
from tests.saga.pipeline import gateway_requests
from tests.services import publish_copies, rabbitmq_start_app, rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def ledger(order) -> tuple[int, int]:
    return gateway_requests(str(order.id))


def cancel(order) -> None:
    order_request_cancel(order_id=order.id, requested_by="test")


def payment_in(order, *statuses: str, timeout: float = 30) -> None:
    wait_until(
        lambda: Payment.objects.filter(order_id=order.id, status__in=statuses).exists(),
        timeout=timeout,
        message=f"the payment of {order.id} to be {statuses}",
    )


def test_a_processed_order_canceled_is_refunded_once(system, user):
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED")
    cancel(order)
    refunded = wait_for_status(order.id, "REFUNDED")
    assert ledger(order) == (1, 1)
    assert refunded.refund_reference == SimulatedRefund.objects.get(succeeded=True).reference


def test_a_cancellation_that_overtakes_order_created_voids_the_payment_and_nothing_is_charged(system, user):
    relay = system["relay"]
    relay.stop()
    try:
        order = make_order(user)
        cancel(order)
        # Only the cancellation reaches billing: as if order_created were still in another queue.
        publish_copies(
            OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CANCEL_REQUESTED)
        )
        payment_in(order, PaymentStatus.VOIDED)
    finally:
        relay.start()
    # The relay publishes order_created (and the cancellation again) late: billing charges nothing.
    created = OutboxEvent.objects.get(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED)
    wait_until(
        lambda: ProcessedEvent.objects.filter(
            consumer=catalogue.BILLING_HANDLE_ORDER_CREATED, event_id=created.id
        ).exists(),
        timeout=30,
        message="billing to consume the late order_created",
    )
    assert Payment.objects.get(order_id=order.id).status == PaymentStatus.VOIDED
    assert wait_for_status(order.id, "CANCELED").status == "CANCELED"
    assert ledger(order) == (0, 0)


def test_a_cancellation_while_the_charge_is_in_flight_refunds_the_capture(system, user):
    with reconfigured(system["billing"], SIMULATED_GATEWAY_LATENCY_MS="2000") as billing:
        order = make_order(user)
        payment_in(order, PaymentStatus.CHARGING)  # billing is inside the gateway call
        cancel(order)
        wait_for_status(order.id, "REFUNDED", timeout=40)
        # The other pool process took the cancellation while the charge was in flight.
        assert f"order {order.id} canceled while charging" in billing.log_text()
    assert ledger(order) == (1, 1)


def test_a_worker_killed_between_charge_and_refund_refunds_once_on_redelivery(system, user):
    with reconfigured(system["billing"], SIMULATED_GATEWAY_LATENCY_MS="3000") as billing:
        order = make_order(user)
        payment_in(order, PaymentStatus.CHARGING)
        cancel(order)
        payment_in(order, PaymentStatus.REFUNDING, timeout=40)  # captured; the refund call has begun
        for child in billing.children():
            child.send_signal(signal.SIGKILL)
        wait_for_status(order.id, "REFUNDED", timeout=60)
    assert ledger(order) == (1, 1)
    assert SimulatedRefund.objects.filter(idempotency_key=f"refund-order-{order.id}").count() == 1


def test_cancellations_requested_while_the_broker_is_down_are_carried_out_after(system, user, client):
    orders = [make_order(user) for _ in range(3)]
    for order in orders:
        wait_for_status(order.id, "PROCESSED")
    client.force_login(user)
    rabbitmqctl("stop_app")
    try:
        for order in orders:
            response = client.post(f"/api/orders/{order.id}/cancel/", content_type="application/json")
            assert response.status_code == 202
            assert response.json()["status"] == "CANCELING"
    finally:
        rabbitmq_start_app()
    for order in orders:
        wait_for_status(order.id, "REFUNDED", timeout=90)
        assert ledger(order) == (1, 1)


def test_a_short_refund_outage_is_retried_then_refunds_once(system, user):
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED")
    SimulatedGatewayOutage.objects.create(
        until=timezone.now() + timezone.timedelta(seconds=2), operation=GatewayOperation.REFUND
    )
    cancel(order)
    wait_for_status(order.id, "REFUNDED", timeout=40)
    assert ledger(order) == (1, 1)
    assert "GatewayUnavailable" in system["billing"].log_text()


def test_a_refund_outage_beyond_the_retry_budget_is_dead_lettered_then_replayed(system, user):
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED")
    outage = SimulatedGatewayOutage.objects.create(
        until=timezone.now() + timezone.timedelta(minutes=5), operation=GatewayOperation.REFUND
    )
    cancel(order)
    failures = lambda: selectors.dead_letters_for_order(str(order.id))  # noqa: E731
    wait_until(failures, timeout=60, message="the cancellation to be dead-lettered")
    assert selectors.failure_summary(failures()[0]).startswith("GatewayUnavailable")
    assert wait_for_status(order.id, "CANCELING").status == "CANCELING"
    assert Payment.objects.get(order_id=order.id).status == PaymentStatus.REFUNDING
    assert ledger(order) == (1, 0)

    outage.until = timezone.now()
    outage.save()
    report = command_output("replay_dead_letters", "--order", str(order.id), "--reset-retries")
    assert "replayed 1, skipped" in report
    wait_for_status(order.id, "REFUNDED", timeout=30)
    assert ledger(order) == (1, 1)


def test_money_of_a_canceled_order_nets_to_zero(system, user):
    """A batch of orders canceled at once, some before billing and some after: each nets to zero."""
    orders = [make_order(user, price=Decimal("7.00")) for _ in range(8)]
    for order in orders:
        cancel(order)
    for order in orders:
        final = wait_for_status(order.id, "CANCELED", "REFUNDED", timeout=60)
        assert ledger(order) == ((0, 0) if final.status == "CANCELED" else (1, 1))
