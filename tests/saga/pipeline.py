"""The pipeline in one process: outbox events delivered to their consumers in an order a test picks.

What the relay and the workers do, without either: each event recorded in the outbox becomes the
envelope the relay would publish, and each of its subscriptions' consumers handles it as a worker
would (tests/consumers.py). A test decides which event is consumed when, so it can play any
arrival order RabbitMQ and several workers per queue could produce.
"""

from decimal import Decimal

from django.db.models import Sum

from billing.models import SimulatedCharge, SimulatedRefund
from ordering import catalogue
from ordering.messaging.consumer import Outcome
from ordering.messaging.envelope import Envelope
from ordering.messaging.models import OutboxEvent
from tests.consumers import deliver


class Pipeline:
    """The events of one order, each consumed only when the test says so."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.consumed: set[str] = set()

    def recorded(self) -> dict[str, Envelope]:
        """Every event of the order recorded so far, by short name (e.g. "created", "refunded")."""
        rows = OutboxEvent.objects.filter(aggregate_id=self.order_id).order_by("created_at")
        return {row.event_type.rsplit(".", 1)[1]: row.envelope() for row in rows}

    def waiting(self) -> list[str]:
        """Events recorded and not yet consumed, by short name."""
        return [name for name in self.recorded() if name not in self.consumed]

    def consume(self, name: str) -> None:
        """Every subscriber of the event `name` handles it once (again, if it was consumed before)."""
        envelope = self.recorded()[name]
        for subscription in catalogue.subscriptions_for(envelope.event_type):
            assert deliver(subscription.task_name, envelope) == [Outcome.ACK], (name, subscription.task_name)
        self.consumed.add(name)

    def consume_all(self) -> None:
        """Consume what waits, in the order it was recorded, until nothing does."""
        while waiting := self.waiting():
            self.consume(waiting[0])


def money_moved(order_id: str) -> Decimal:
    """Successful charges minus successful refunds of the order, from the gateway's own ledger."""
    charged = SimulatedCharge.objects.filter(idempotency_key=f"order-{order_id}", succeeded=True)
    refunded = SimulatedRefund.objects.filter(charge__in=charged, succeeded=True)
    return (charged.aggregate(s=Sum("amount"))["s"] or Decimal(0)) - (
        refunded.aggregate(s=Sum("amount"))["s"] or Decimal(0)
    )


def gateway_requests(order_id: str) -> tuple[int, int]:
    """(successful charges, successful refunds) of the order at the gateway."""
    charges = SimulatedCharge.objects.filter(idempotency_key=f"order-{order_id}", succeeded=True)
    return charges.count(), SimulatedRefund.objects.filter(charge__in=charges, succeeded=True).count()
