"""Billing's side of a cancellation: void what was not charged, refund what was, once, whatever arrives when.

In process, through the consumer machinery (tests/consumers.py): billing's two consumers of one order
(order_created, cancel_requested), in every order they can meet, with redeliveries, crashes between
the steps, refund outages, a refusal, batches, and a real race with a charge in flight. The gateway's
own ledger (SimulatedCharge, SimulatedRefund) says what money moved.
"""

import dataclasses
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from kombu import Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from billing.gateways import SimulatedGateway
from billing.models import (
    GatewayOperation,
    Payment,
    PaymentStatus,
    SimulatedCharge,
    SimulatedGatewayOutage,
    SimulatedRefund,
)
from fraud.models import BlockedBuyer, FraudCheck
from ordering import catalogue
from ordering.celery import app
from ordering.messaging import selectors
from ordering.messaging.consumer import Delivery, Outcome, consume
from ordering.messaging.envelope import Envelope
from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent
from ordering.messaging.publisher import ConfirmedPublisher, connection_for_confirmed_batches
from ordering.messaging.relay import task_id_for, task_message
from ordering.messaging.replay import ReplayCriteria, dead_letters_replay
from ordering.messaging.topology import task_queues
from orders.events import OrderCancelRequested, OrderCreated
from tests.conftest import envelope_for
from tests.consumers import deliver
from tests.events import order_created

pytestmark = pytest.mark.django_db(transaction=True)

CREATED = catalogue.BILLING_HANDLE_ORDER_CREATED
CANCEL = catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED
THIS_MODULE = __name__


def cancel_requested(created: Envelope) -> Envelope:
    """The order's cancellation, as orders records it (it carries what billing needs to open a payment)."""
    order = created.event(OrderCreated)
    return envelope_for(
        OrderCancelRequested(
            order_id=order.order_id,
            amount=order.amount,
            currency=order.currency,
            buyer=order.buyer,
            requested_at=timezone.now().isoformat(),
            requested_by="api:1",
        )
    )


def another_copy(envelope: Envelope) -> Envelope:
    """The same event under another event id (what a new id for one fact would be)."""
    return dataclasses.replace(envelope, event_id=uuid.uuid4())


def handled(consumer: str, *envelopes: Envelope) -> None:
    assert deliver(consumer, *envelopes) == [Outcome.ACK] * len(envelopes)


def payment(envelope: Envelope) -> Payment:
    return Payment.objects.get(order_id=envelope.aggregate_id)


def billing_events(envelope: Envelope) -> list[str]:
    """Billing's events of the order, oldest first, by short name ("captured", "refunded", ...)."""
    rows = OutboxEvent.objects.filter(aggregate_id=envelope.aggregate_id, event_type__startswith="billing.").order_by(
        "created_at"
    )
    return [
        event_type.rsplit(".", 1)[1] for event_type in rows.order_by("created_at").values_list("event_type", flat=True)
    ]


def billing_event(envelope: Envelope, name: str) -> OutboxEvent:
    return OutboxEvent.objects.get(aggregate_id=envelope.aggregate_id, event_type=f"billing.payment.{name}")


def money(envelope: Envelope) -> tuple[int, int, int]:
    """(charge requests, successful charges, successful refunds) of the order at the gateway."""
    charges = SimulatedCharge.objects.filter(idempotency_key=Payment.idempotency_key_for(envelope.aggregate_id))
    refunds = SimulatedRefund.objects.filter(charge__in=charges, succeeded=True)
    return charges.count(), charges.filter(succeeded=True).count(), refunds.count()


def charging_as_a_crash_left_it(created: Envelope, *, charged_at_the_gateway: bool) -> Payment:
    """The first delivery of order_created opened the payment (CHARGING) and died before recording an outcome,
    before or after the gateway charged it."""
    order = created.event(OrderCreated)
    opened = Payment.objects.create(
        order_id=order.order_id, amount=Decimal(order.amount), currency=order.currency, buyer=order.buyer,
        idempotency_key=Payment.idempotency_key_for(order.order_id),
    )  # fmt: skip
    if charged_at_the_gateway:
        SimulatedGateway().charge(
            idempotency_key=opened.idempotency_key, amount=opened.amount, currency=opened.currency, buyer=opened.buyer
        )
    return opened


# --- Gateways standing in for what the simulated one cannot do on its own ---------------------------


class WorkerKilled(BaseException):
    """The worker process died here: not an Exception, so nothing in the consumer machinery handles it."""


class CrashingRefundGateway(SimulatedGateway):
    """Charges as usual; the worker dies before a refund request leaves it."""

    def refund(self, **request) -> None:
        raise WorkerKilled("killed between the capture and the refund")


class HeldChargeGateway(SimulatedGateway):
    """A charge that waits inside the gateway call until the test releases it."""

    entered = threading.Event()
    release = threading.Event()
    released_in_time: bool | None = None

    def charge(self, **request):
        HeldChargeGateway.entered.set()
        HeldChargeGateway.released_in_time = HeldChargeGateway.release.wait(timeout=30)
        return super().charge(**request)


class CancelDuringChargeGateway(SimulatedGateway):
    """The order's cancellation is consumed while its charge is at the gateway (in this same thread)."""

    cancellation: Envelope | None = None
    refund_requests = 0

    def charge(self, **request):
        assert deliver(CANCEL, CancelDuringChargeGateway.cancellation) == [Outcome.ACK]
        return super().charge(**request)

    def refund(self, **request):
        CancelDuringChargeGateway.refund_requests += 1
        return super().refund(**request)


# --- A cancellation before billing saw the order ----------------------------------------------------


def test_a_cancellation_before_order_created_voids_the_payment_and_the_late_order_charges_nothing():
    created = order_created()
    cancel = cancel_requested(created)
    handled(CANCEL, cancel)
    tombstone = payment(created)
    assert (tombstone.status, tombstone.amount, tombstone.outcome_reason) == (
        PaymentStatus.VOIDED, Decimal("25.00"), "order canceled before payment",
    )  # fmt: skip
    voided = billing_event(created, "voided")
    assert voided.payload == {"order_id": created.aggregate_id, "payment_id": str(tombstone.id)}
    assert voided.causation_id == cancel.event_id

    handled(CREATED, created)  # the late order_created
    assert money(created) == (0, 0, 0)
    assert not FraudCheck.objects.filter(order_id=created.aggregate_id).exists()
    assert payment(created).status == PaymentStatus.VOIDED
    assert billing_events(created) == ["voided"]
    # Handled (its inbox row), so neither a redelivery nor the watchdog sends it again.
    assert ProcessedEvent.objects.filter(consumer=CREATED, event_id=created.event_id).exists()


# --- A cancellation after the capture -----------------------------------------------------------------


def test_a_cancellation_after_the_capture_refunds_it_once():
    created = order_created()
    handled(CREATED, created)
    cancel = cancel_requested(created)
    handled(CANCEL, cancel)
    handled(CANCEL, cancel)  # a redelivery
    refunded = payment(created)
    assert refunded.status == PaymentStatus.REFUNDED
    assert money(created) == (1, 1, 1)
    refund = SimulatedRefund.objects.get()
    assert (refund.idempotency_key, refund.reference, refund.amount) == (
        f"refund-order-{created.aggregate_id}", refunded.refund_reference, Decimal("25.00"),
    )  # fmt: skip
    event = billing_event(created, "refunded")
    assert event.payload == {
        "order_id": created.aggregate_id,
        "payment_id": str(refunded.id),
        "amount": "25.00",
        "currency": "EUR",
        "gateway_reference": refunded.gateway_reference,
        "refund_reference": refund.reference,
    }
    assert refunded.gateway_reference == SimulatedCharge.objects.get().reference
    assert (event.causation_id, event.correlation_id) == (cancel.event_id, cancel.correlation_id)
    assert billing_events(created) == ["captured", "refunded"]


# --- A cancellation while the charge is in flight -------------------------------------------------------


@pytest.mark.parametrize("charged_at_the_gateway", [False, True])
def test_a_cancellation_while_charging_marks_the_payment_and_the_redelivered_order_charges_nothing_more(
    charged_at_the_gateway,
):
    """The redelivery voids the payment's key at the gateway instead of charging it: nothing is ever charged
    under it, or the charge the crashed delivery made comes back, once, and is refunded once."""
    created = order_created()
    charging_as_a_crash_left_it(created, charged_at_the_gateway=charged_at_the_gateway)
    handled(CANCEL, cancel_requested(created))
    marked = payment(created)
    assert (marked.status, marked.cancel_requested) == (PaymentStatus.CHARGING, True)
    assert billing_events(created) == []
    assert SimulatedRefund.objects.count() == 0

    handled(CREATED, created)  # the redelivery of order_created
    if charged_at_the_gateway:
        assert payment(created).status == PaymentStatus.REFUNDED
        assert money(created) == (1, 1, 1)
        assert billing_events(created) == ["captured", "refunded"]
        assert billing_event(created, "refunded").causation_id == created.event_id
    else:
        assert payment(created).status == PaymentStatus.VOIDED
        assert money(created) == (1, 0, 0)  # the key's one request: the void
        assert billing_events(created) == ["voided"]
        assert billing_event(created, "voided").causation_id == created.event_id
    handled(CREATED, envelope_for(created.event(OrderCreated)))  # a later copy under another id
    assert money(created)[1:] == ((1, 1) if charged_at_the_gateway else (0, 0))


def test_a_real_race_the_cancellation_arrives_while_the_charge_is_at_the_gateway(settings):
    """order_created in a thread, held inside the gateway's charge (no transaction open); the cancellation is
    consumed meanwhile: one charge, one refund, no deadlock."""
    settings.PAYMENT_GATEWAY = f"{THIS_MODULE}.HeldChargeGateway"
    HeldChargeGateway.entered.clear()
    HeldChargeGateway.release.clear()
    HeldChargeGateway.released_in_time = None
    created = order_created()
    outcomes: list[Outcome] = []

    def bill() -> None:
        try:
            outcomes.extend(deliver(CREATED, created))
        finally:
            connection.close()

    billing = threading.Thread(target=bill)
    billing.start()
    try:
        assert HeldChargeGateway.entered.wait(timeout=60), "billing never reached the gateway"
        assert payment(created).status == PaymentStatus.CHARGING
        # If the charging flow held the payment's row (or any lock) across the call, this would wait
        # for it, and the charge would go on only when its own wait timed out.
        handled(CANCEL, cancel_requested(created))
        assert payment(created).cancel_requested
    finally:
        HeldChargeGateway.release.set()
        billing.join(timeout=60)

    assert HeldChargeGateway.released_in_time is True
    assert outcomes == [Outcome.ACK]
    assert payment(created).status == PaymentStatus.REFUNDED
    assert money(created) == (1, 1, 1)
    assert billing_events(created) == ["captured", "refunded"]


# --- Crashes, outages and refusals of the refund ------------------------------------------------------------


@pytest.mark.parametrize("crashed_in", ["cancel_requested", "order_created"])
@pytest.mark.parametrize("redelivered", ["cancel_requested", "order_created"])
def test_a_crash_between_capture_and_refund_is_resumed_by_a_redelivery_of_either_event(
    settings, crashed_in, redelivered
):
    """REFUNDING, no refund at the gateway yet: whichever of the order's two events comes again refunds it."""
    created = order_created()
    cancel = cancel_requested(created)
    settings.PAYMENT_GATEWAY = f"{THIS_MODULE}.CrashingRefundGateway"
    if crashed_in == "cancel_requested":  # captured earlier; the cancellation's refund never left
        handled(CREATED, created)
        with pytest.raises(WorkerKilled):
            deliver(CANCEL, cancel)
    else:  # charged by a delivery that died, canceled meanwhile; the retry's refund of that charge never left
        charging_as_a_crash_left_it(created, charged_at_the_gateway=True)
        handled(CANCEL, cancel)
        with pytest.raises(WorkerKilled):
            deliver(CREATED, created)
    connection.close()  # the dead worker's connection
    assert payment(created).status == PaymentStatus.REFUNDING
    assert money(created) == (1, 1, 0)

    settings.PAYMENT_GATEWAY = "billing.gateways.SimulatedGateway"
    again = cancel if redelivered == "cancel_requested" else created
    handled(CANCEL if redelivered == "cancel_requested" else CREATED, again)
    assert payment(created).status == PaymentStatus.REFUNDED
    assert money(created) == (1, 1, 1)
    assert billing_events(created) == ["captured", "refunded"]
    assert billing_event(created, "refunded").causation_id == again.event_id
    # And the other event, redelivered too, changes nothing more.
    handled(CREATED, created)
    handled(CANCEL, cancel)
    assert money(created) == (1, 1, 1)
    assert billing_events(created) == ["captured", "refunded"]


@pytest.fixture
def retries_wait_in_the_broker(broker):
    """The delay exchanges and queues a worker declares when it starts (Celery's native delayed delivery),
    where a retried message waits out its countdown."""
    declare_native_delayed_delivery_exchanges_and_queues(broker, "quorum")
    for queue in task_queues():
        bind_queue_to_native_delayed_delivery_exchange(broker, queue)
    return broker


def refund_outage() -> SimulatedGatewayOutage:
    return SimulatedGatewayOutage.objects.create(
        operation=GatewayOperation.REFUND, until=timezone.now() + timedelta(minutes=5)
    )


def outage_over() -> None:
    SimulatedGatewayOutage.objects.update(until=timezone.now())


@pytest.mark.parametrize("refunding", ["cancel after the capture", "cancel while charging"])
def test_a_refund_outage_retries_the_message_and_the_redelivery_after_it_refunds_once(
    retries_wait_in_the_broker, refunding
):
    """The message whose refund met the outage is retried: the cancellation's, or order_created's when the
    charge it found was already canceled."""
    created = order_created()
    cancel = cancel_requested(created)
    if refunding == "cancel after the capture":
        handled(CREATED, created)
        retried, consumer = cancel, CANCEL
    else:  # charged by a delivery that died: its retry finds the charge and refunds it
        charging_as_a_crash_left_it(created, charged_at_the_gateway=True)
        handled(CANCEL, cancel)
        retried, consumer = created, CREATED
    refund_outage()
    assert deliver(consumer, retried) == [Outcome.RETRY]
    assert payment(created).status == PaymentStatus.REFUNDING
    assert money(created) == (1, 1, 0)
    assert billing_events(created) == ["captured"]
    assert deliver(consumer, retried) == [Outcome.RETRY]  # still down: retried again, nothing moved

    outage_over()
    handled(consumer, retried)
    assert payment(created).status == PaymentStatus.REFUNDED
    assert money(created) == (1, 1, 1)
    assert billing_events(created) == ["captured", "refunded"]


def publish_to_queue(envelope: Envelope, task_name: str, **headers: object) -> None:
    """The relay's message for `envelope`, straight into the consumer's queue (confirmed)."""
    queue = catalogue.queue_of_task(task_name)
    message = task_message(app, envelope, task_name, queue)
    message = dataclasses.replace(message, exchange="", headers={**message.headers, **headers})
    with connection_for_confirmed_batches(app) as conn:
        publisher = ConfirmedPublisher(conn, confirm_timeout=10)
        try:
            publisher.publish([message])
        finally:
            publisher.close()


def take(conn, envelope: Envelope, task_name: str):
    """The message of `envelope` for `task_name` from its queue, unacked (another test's retry arriving late is
    taken out of the way)."""
    bound = Queue(catalogue.queue_of_task(task_name), no_declare=True).bind(conn.default_channel)
    while (message := bound.get(no_ack=False, accept=["json"])) is not None:
        if message.headers.get("id") == task_id_for(envelope.event_id, task_name):
            return message
        message.ack()
    raise AssertionError(f"no message of event {envelope.event_id} for {task_name}")


def consumed(message, task_name: str) -> list[Outcome]:
    """A worker's handling of one message taken from RabbitMQ: the machinery's outcome."""
    delivery = Delivery(
        headers=message.headers, properties=message.properties, delivery_info=message.delivery_info,
        body=message.body, hostname="tests@localhost",
    )  # fmt: skip
    return consume(app.tasks[task_name], [delivery])


@pytest.mark.parametrize("then", ["replay", "redelivery"])
def test_a_refund_outage_past_the_retries_dead_letters_the_message_and_a_replay_or_a_redelivery_refunds(
    broker, settings, then
):
    created = order_created()
    handled(CREATED, created)
    cancel = cancel_requested(created)
    refund_outage()
    # Its last attempt: the retry budget spent.
    publish_to_queue(cancel, CANCEL, retries=settings.MESSAGING["RETRY_MAX"])
    message = take(broker, cancel, CANCEL)
    assert consumed(message, CANCEL) == [Outcome.REJECT]
    message.reject(requeue=False)  # what the worker does with a REJECT: RabbitMQ dead-letters it
    [letter] = DeadLetter.objects.all()
    assert selectors.failure_summary(letter).startswith("GatewayUnavailable: simulated gateway outage (refunds)")
    assert selectors.failure_attempts(letter) == settings.MESSAGING["RETRY_MAX"] + 1
    assert payment(created).status == PaymentStatus.REFUNDING
    assert money(created) == (1, 1, 0)

    outage_over()
    if then == "replay":
        criteria = ReplayCriteria(order_id=created.aggregate_id, reset_retries=True)
        summary, _ = dead_letters_replay(criteria=criteria, actor="test", reason="refunds are back")
        assert [letter.task_name for letter in summary.replayed] == [CANCEL]
        assert consumed(take(broker, cancel, CANCEL), CANCEL) == [Outcome.ACK]
    else:
        handled(CANCEL, cancel)
    assert payment(created).status == PaymentStatus.REFUNDED
    assert money(created) == (1, 1, 1)
    assert billing_events(created) == ["captured", "refunded"]
    assert selectors.dead_letter_resolved(letter)


def test_a_refund_the_gateway_refuses_is_dead_lettered_with_its_reason():
    created = order_created()
    handled(CREATED, created)
    charged = payment(created)
    # Someone refunded the charge at the provider by hand, under another key.
    SimulatedGateway().refund(
        idempotency_key="by-hand", charge_reference=charged.gateway_reference, amount=charged.amount, currency="EUR"
    )
    assert deliver(CANCEL, cancel_requested(created)) == [Outcome.REJECT]
    summary = selectors.failure_summary(DeadLetter.objects.get())
    assert summary == (
        f"PermanentError: order {created.aggregate_id}: the gateway refused the refund: the charge was refunded already"
    )
    assert payment(created).status == PaymentStatus.REFUNDING  # for an operator to look at
    assert billing_events(created) == ["captured"]
    assert SimulatedRefund.objects.get().idempotency_key == "by-hand"


@pytest.mark.parametrize("outcome", ["declined", "blocked"])
def test_a_cancellation_of_a_declined_or_blocked_payment_does_nothing(settings, outcome):
    settings.SIMULATED_GATEWAY_DECLINE_ABOVE = Decimal("100.00")
    if outcome == "declined":
        created = order_created(amount="100.01")
    else:
        BlockedBuyer.objects.create(buyer="mallory@example.com")
        created = order_created(buyer="mallory@example.com")
    handled(CREATED, created)
    before = payment(created)
    cancel = cancel_requested(created)
    handled(CANCEL, cancel)
    after = payment(created)
    assert (after.status, after.updated_at, after.cancel_requested) == (before.status, before.updated_at, False)
    assert billing_events(created) == [outcome]
    assert SimulatedRefund.objects.count() == 0
    assert ProcessedEvent.objects.filter(consumer=CANCEL, event_id=cancel.event_id).exists()


# --- Batches ------------------------------------------------------------------------------------------------


def test_a_batch_of_cancellations_handles_each_case(settings):
    settings.SIMULATED_GATEWAY_DECLINE_ABOVE = Decimal("100.00")
    unseen, captured, charging, declined = order_created(), order_created(), order_created(), order_created("100.01")
    handled(CREATED, captured, declined)
    charging_as_a_crash_left_it(charging, charged_at_the_gateway=True)
    cancels = [cancel_requested(created) for created in (unseen, captured, charging, declined)]
    handled(CANCEL, *cancels, cancels[1])  # with a copy of one in the same batch
    assert payment(unseen).status == PaymentStatus.VOIDED
    assert payment(captured).status == PaymentStatus.REFUNDED
    assert (payment(charging).status, payment(charging).cancel_requested) == (PaymentStatus.CHARGING, True)
    assert payment(declined).status == PaymentStatus.DECLINED
    assert [billing_events(created) for created in (unseen, captured, charging, declined)] == [
        ["voided"], ["captured", "refunded"], [], ["declined"],
    ]  # fmt: skip
    assert [money(created) for created in (unseen, captured, charging, declined)] == [
        (0, 0, 0), (1, 1, 1), (1, 1, 0), (1, 0, 0),
    ]  # fmt: skip
    # Each of the batch's events names its own cause.
    assert billing_event(unseen, "voided").causation_id == cancels[0].event_id
    assert billing_event(captured, "refunded").causation_id == cancels[1].event_id


@pytest.mark.parametrize("copy", ["the same event twice", "two events of the order"])
@pytest.mark.parametrize("case", ["captured", "unseen"])
def test_two_cancellations_of_one_order_in_one_batch_refund_or_void_it_once(copy, case):
    created = order_created()
    if case == "captured":
        handled(CREATED, created)
    cancel = cancel_requested(created)
    handled(CANCEL, cancel, cancel if copy == "the same event twice" else another_copy(cancel))
    if case == "captured":
        assert payment(created).status == PaymentStatus.REFUNDED
        assert money(created) == (1, 1, 1)
        assert billing_events(created) == ["captured", "refunded"]
    else:
        assert payment(created).status == PaymentStatus.VOIDED
        assert money(created) == (0, 0, 0)
        assert billing_events(created) == ["voided"]


def test_two_copies_of_an_order_in_one_batch_canceled_during_the_charge_refund_it_once(settings):
    created = order_created()
    copy = envelope_for(created.event(OrderCreated))  # the same order under another event id
    CancelDuringChargeGateway.cancellation = cancel_requested(created)
    settings.PAYMENT_GATEWAY = f"{THIS_MODULE}.CancelDuringChargeGateway"
    assert deliver(CREATED, created, copy) == [Outcome.ACK, Outcome.ACK]
    # One request, in one pass: the batch did not fail and run again message by message.
    assert CancelDuringChargeGateway.refund_requests == 1
    payment = Payment.objects.get(order_id=created.aggregate_id)
    assert payment.status == PaymentStatus.REFUNDED
    assert SimulatedRefund.objects.filter(succeeded=True).count() == 1
    refunded = OutboxEvent.objects.filter(aggregate_id=created.aggregate_id, event_type=catalogue.PAYMENT_REFUNDED)
    assert refunded.count() == 1
