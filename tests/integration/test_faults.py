"""Fault tests: duplicates, killed processes, broker outage, gateway outage. No order lost or charged twice."""

import signal
import time

import pytest
from django.utils import timezone

from billing.models import SimulatedCharge, SimulatedGatewayOutage
from ordering.messaging.models import OutboxEvent
from tests.conftest import make_order
from tests.integration.conftest import reconfigured, wait_for_status
from tests.processes import wait_until
from tests.services import publish_copies, rabbitmq_start_app, rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def charges_for(order) -> int:
    return SimulatedCharge.objects.filter(idempotency_key=f"order-{order.id}").count()


@pytest.fixture
def slow_billing(system):
    """The billing worker with a 3 s gateway call, so a test can kill it mid-task."""
    with reconfigured(system["billing"], SIMULATED_GATEWAY_LATENCY_MS="3000") as billing:
        yield billing


def wait_for_billing_to_start(order) -> None:
    """The consumer is inside the gateway call once the payment row exists."""
    from billing.models import Payment

    wait_until(lambda: Payment.objects.filter(order_id=order.id).exists(), timeout=20, message="billing to start")


def test_duplicate_deliveries_charge_once(system, user):
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED")
    event = OutboxEvent.objects.get(aggregate_id=str(order.id), event_type="orders.order.created")
    publish_copies([event] * 3)  # three more copies of the same message, consumed concurrently
    billing = system["billing"]
    wait_until(
        lambda: billing.log_text().count(f"duplicate {event.id} ignored") == 3,
        timeout=20,
        message="the duplicates to be consumed",
    )
    assert charges_for(order) == 1


def test_killed_pool_process_mid_task_is_redelivered(slow_billing, user):
    order = make_order(user)
    wait_for_billing_to_start(order)
    children = slow_billing.children()
    assert children, "no pool processes"
    for child in children:
        child.send_signal(signal.SIGKILL)
    processed = wait_for_status(order.id, "PROCESSED", timeout=40)
    assert processed.status == "PROCESSED"
    assert charges_for(order) == 1
    assert "WorkerLostError" in slow_billing.log_text() or "signal 9" in slow_billing.log_text()


def test_killed_worker_mid_task_is_redelivered_to_the_next_worker(slow_billing, user):
    order = make_order(user)
    wait_for_billing_to_start(order)
    slow_billing.kill_all()  # main process and pool: the message was never acked
    time.sleep(1)
    slow_billing.start()
    wait_for_status(order.id, "PROCESSED", timeout=40)
    assert charges_for(order) == 1


def test_orders_are_accepted_while_the_broker_is_down_and_processed_after(system, user, client):
    client.force_login(user)
    ids = []
    rabbitmqctl("stop_app")
    try:
        started = time.monotonic()
        for i in range(20):
            response = client.post(
                "/api/orders/",
                {"product_name": "p", "price": "5.00", "buyer": f"b{i}@example.com"},
                content_type="application/json",
            )
            assert response.status_code == 201
            ids.append(response.json()["id"])
        accepting = time.monotonic() - started
    finally:
        rabbitmq_start_app()
    assert accepting < 10, f"creating orders blocked on the broker ({accepting:.1f}s)"
    for order_id in ids:
        wait_for_status(order_id, "PROCESSED", timeout=90)
    assert SimulatedCharge.objects.count() == 20


def test_short_gateway_outage_is_retried_then_succeeds(system, user):
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timezone.timedelta(seconds=2))
    order = make_order(user)
    wait_for_status(order.id, "PROCESSED", timeout=30)
    assert charges_for(order) == 1
    assert "GatewayUnavailable" in system["billing"].log_text()


def test_a_broker_outage_with_batches_in_flight_loses_nothing_and_processing_resumes(system, user):
    """The broker stops while billing is mid-batch, for longer than the soft time limit.

    The worker's event loop stops while it reconnects: the finished batch's result waits unread,
    and the soft time limit's timer fires at an idle pool process. Afterwards the worker must
    take up its queue again, and every order still be charged once.
    """
    # Batches of at most 4 charges of 300 ms: a batch takes 1.2 s, well inside the 2 s soft limit
    # even on a loaded machine, so only the outage can trip it (a batch of every waiting order
    # could outgrow the limit on every retry and be dead-lettered).
    with reconfigured(
        system["billing"], CELERY_TASK_SOFT_TIME_LIMIT="2", SIMULATED_GATEWAY_LATENCY_MS="300", CONSUMER_BATCH_MAX="4"
    ):
        before = [make_order(user) for _ in range(6)]
        wait_for_billing_to_start(before[0])
        rabbitmqctl("stop_app")
        try:
            time.sleep(4)  # the outage: twice the soft time limit
        finally:
            rabbitmq_start_app()
        after = [make_order(user) for _ in range(6)]
        for order in before + after:
            wait_for_status(order.id, "PROCESSED", timeout=90)
    assert all(charges_for(order) == 1 for order in before + after)


def test_a_batch_over_the_hard_time_limit_ends_its_pool_process_and_goes_back_to_its_queue(system, user):
    with reconfigured(
        system["billing"],
        CELERY_TASK_TIME_LIMIT="2",
        CELERY_TASK_SOFT_TIME_LIMIT="30",
        SIMULATED_GATEWAY_LATENCY_MS="4000",
    ) as billing:
        order = make_order(user)
        wait_until(
            lambda: "hard time limit" in billing.log_text() and "lost" in billing.log_text(),
            timeout=40,
            message="the batch's pool process to exit and the batch to be requeued",
        )
    # The billing worker runs with its usual limits again: the requeued message is charged once.
    wait_for_status(order.id, "PROCESSED", timeout=60)
    assert charges_for(order) == 1
