"""Order reads: what an API client may see; stuck orders and what holds each up."""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Case, F, Q, QuerySet, When
from django.utils import timezone

from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from ordering.messaging.selectors import AggregateDelivery, aggregate_deliveries
from orders.models import Order, OrderStatus


def order_list_visible_to(*, user: AbstractBaseUser) -> QuerySet[Order]:
    """A client sees only its own orders; a user with the `orders.view_order` permission sees all.

    Being staff is not enough: it opens the admin, not every client's orders and buyers.
    """
    orders = Order.objects.select_related("owner")
    # An anonymous user owns nothing. The API never lets one through, but the OpenAPI schema is
    # generated with one (and `check --deploy` warns when that fails).
    if not user.is_authenticated:
        return orders.none()
    return orders if user.has_perm("orders.view_order") else orders.filter(owner=user)


def order_list_cancelable_by(*, user: AbstractBaseUser) -> QuerySet[Order]:
    """The orders `user` may cancel through the API: its own.

    Seeing every order (`orders.view_order`, an auditor's permission) is no licence to cancel them;
    staff with `orders.cancel_order` cancel other clients' orders in the admin, where it is audited.
    """
    if not user.is_authenticated:
        return Order.objects.none()
    return Order.objects.select_related("owner").filter(owner=user)


# What each of an order's events means, in an operator's words, from the fields of its payload.
_EVENT_SUMMARIES = {
    catalogue.ORDER_CANCEL_REQUESTED: "cancellation requested by {requester}",
    catalogue.PAYMENT_VOIDED: "payment voided, nothing was charged",
    catalogue.PAYMENT_REFUNDED: (
        "refunded {amount} {currency} in full: refund {refund_reference} of charge {gateway_reference}"
    ),
    catalogue.PAYMENT_CAPTURED: "charged {amount} {currency}: charge {gateway_reference}",
    catalogue.PAYMENT_DECLINED: "charge declined: {reason}",
    catalogue.PAYMENT_BLOCKED: "blocked by fraud: {reasons}",
}


class _PayloadFields(dict):
    """A payload's fields for a summary: lists joined, a field its version lacks read as "?"."""

    def __missing__(self, name: str) -> str:
        return "?"

    def __getitem__(self, name: str) -> str:
        value = super().__getitem__(name)
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        return "?" if value in (None, "") else str(value)


def order_event_summary(event: OutboxEvent) -> str:
    """What one of an order's events means, for its timeline in the admin ("" for nothing to add)."""
    template = _EVENT_SUMMARIES.get(event.event_type)
    if template is None:
        return ""
    fields = _PayloadFields(event.payload if isinstance(event.payload, dict) else {})
    if event.event_type == catalogue.ORDER_CANCEL_REQUESTED:
        fields["requester"] = _requester(fields["requested_by"])
    if event.event_type == catalogue.PAYMENT_BLOCKED:  # version 1 named them `reasons`
        fields["reasons"] = fields.get("fraud_reasons") or fields.get("reasons")
    return template.format_map(fields)


def _requester(requested_by: str) -> str:
    """Who asked, e.g. "admin:7" -> "admin:7 (ops)": with the user's name while the user exists."""
    _, _, pk = requested_by.partition(":")
    if not pk.isdigit():
        return requested_by
    users = get_user_model()
    username = users.objects.filter(pk=pk).values_list(users.USERNAME_FIELD, flat=True).first()
    return f"{requested_by} ({username})" if username else requested_by


# Statuses an order waits in for billing: for its outcome, or for the void or refund of its cancellation.
STUCK_STATUSES = (OrderStatus.PENDING, OrderStatus.CANCELING)


def order_list_stuck(*, older_than: timedelta) -> QuerySet[Order]:
    """Orders waiting for billing longer than `older_than`: something upstream needs an operator.

    PENDING since its creation, or CANCELING since its cancellation was requested (an order
    created long ago and canceled a minute ago is on its way).
    """
    cutoff = timezone.now() - older_than
    return Order.objects.filter(
        Q(status=OrderStatus.PENDING, created_at__lt=cutoff)
        | Q(status=OrderStatus.CANCELING, cancel_requested_at__lt=cutoff)
    )


def _waiting_since() -> Case:
    """Order.waiting_since in SQL: when the order began to wait in its status."""
    return Case(When(status=OrderStatus.CANCELING, then=F("cancel_requested_at")), default=F("created_at"))


class StuckState(StrEnum):
    """Why an order is still PENDING, or still CANCELING."""

    # An event of it is on its way: unpublished, published recently, or its task waits for a retry.
    IN_FLIGHT = "in flight"
    # A task failed for good on one of its events: the operator replays it (admin, replay_dead_letters).
    DEAD_LETTERED = "dead-lettered"
    # Nothing of it is on its way any more: its creation event is not in the outbox, or an event
    # was published long ago and never handled. The watchdog re-drives it (if it can: the detail says).
    MISSING = "missing"


@dataclass(frozen=True)
class StuckOrder:
    order_id: str
    status: str  # PENDING or CANCELING
    since: datetime  # when it began to wait in that status
    state: StuckState
    # What holds it up, for operators.
    detail: str
    # MISSING only: its published events some subscriber never handled, (event id, event type),
    # which a re-drive publishes again under the same ids; and, PENDING only, whether its creation
    # event must be recorded again (the outbox has none and billing never handled one).
    unconsumed_events: tuple[tuple[uuid.UUID, str], ...] = ()
    needs_creation_event: bool = False


def order_list_stuck_classified(*, older_than: timedelta, order_ids: Iterable[str] | None = None) -> list[StuckOrder]:
    """Orders stuck longer than `older_than` (order_list_stuck), longest waiting first (WATCHDOG["MAX_ORDERS"]
    at most), each classified."""
    orders = (
        order_list_stuck(older_than=older_than)
        .annotate(since=_waiting_since())
        .order_by("since")
        .values_list("id", "status", "since")
    )
    if order_ids is not None:
        orders = orders.filter(pk__in=list(order_ids))
    waiting = [(str(pk), status, since) for pk, status, since in orders[: settings.WATCHDOG["MAX_ORDERS"]]]
    in_flight_window = timedelta(seconds=settings.WATCHDOG["IN_FLIGHT_SECONDS"])
    deliveries = aggregate_deliveries(aggregate_ids=[pk for pk, _, _ in waiting], recent=in_flight_window)
    return [_classified(pk, status, since, deliveries[pk]) for pk, status, since in waiting]


def stuck_order_counts(*, older_than: timedelta) -> dict[str, int]:
    """Stuck orders by state (every state, 0 included), e.g. {"in flight": 2, "dead-lettered": 1, "missing": 0}."""
    counts = dict.fromkeys((state.value for state in StuckState), 0)
    for stuck in order_list_stuck_classified(older_than=older_than):
        counts[stuck.state.value] += 1
    return counts


def _classified(order_id: str, status: str, since: datetime, delivery: AggregateDelivery) -> StuckOrder:
    def stuck(state: StuckState, detail: str, **redrive: object) -> StuckOrder:
        return StuckOrder(order_id=order_id, status=status, since=since, state=state, detail=detail, **redrive)

    if delivery.dead_lettered:
        return stuck(StuckState.DEAD_LETTERED, "an unresolved dead letter")
    if delivery.unpublished:
        return stuck(StuckState.IN_FLIGHT, "an event waits for the relay")
    if delivery.recently_active:
        return stuck(StuckState.IN_FLIGHT, "an event published or retried recently")
    if delivery.unconsumed:
        events = ", ".join(f"{event.event_type} {event.id}" for event in delivery.unconsumed)
        return stuck(
            StuckState.MISSING,
            f"published long ago, never handled: {events}",
            unconsumed_events=tuple((event.id, event.event_type) for event in delivery.unconsumed),
        )
    detail, needs_creation_event = _nothing_on_its_way(status, delivery)
    return stuck(StuckState.MISSING, detail, needs_creation_event=needs_creation_event)


def _nothing_on_its_way(status: str, delivery: AggregateDelivery) -> tuple[str, bool]:
    """Missing, with no event left to publish again: what to tell operators, and whether the order's
    creation event is to be recorded anew (PENDING only)."""
    consumers, recorded = {consumer for consumer, _ in delivery.consumed}, delivery.recorded_types
    if status == OrderStatus.CANCELING:
        # Not recorded anew: the event commits with the status change, so a missing one was deleted
        # (by hand, or purged), and who asked is only in it; an operator looks.
        if (
            catalogue.ORDER_CANCEL_REQUESTED not in recorded
            and catalogue.BILLING_HANDLE_ORDER_CANCEL_REQUESTED not in consumers
        ):
            return "no cancel_requested event in the outbox: needs an operator", False
        return "billing handled the cancellation and no outcome is left to deliver: needs an operator", False
    if catalogue.ORDER_CREATED not in recorded and catalogue.BILLING_HANDLE_ORDER_CREATED not in consumers:
        return "no order_created event in the outbox", True
    # Billing handled it and no outcome is left to deliver: nothing a re-drive could send.
    return "billing handled it and no outcome is left to deliver: needs an operator", False
