"""Fixtures shared by every layer of the tests."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.envelope import DomainEvent, Envelope
from ordering.messaging.topology import declare_topology
from orders.models import Order
from orders.services import order_create


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username=f"client-{uuid.uuid4().hex[:6]}", password="pw")


@pytest.fixture
def api_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def broker():
    """A connection to the test vhost with the topology declared and every queue empty, before and after.

    Emptied afterwards too: a message a test leaves (a dead letter it did not replay) would reach the
    workers or the dead-letter counts of the tests after it.
    """
    with app.connection_for_write() as conn:
        declare_topology(conn)
        purge_consumer_queues(conn)
        yield conn
    with app.connection_for_write() as conn:  # a fresh channel: the test may have closed or broken its own
        declare_topology(conn)  # and deleted a queue (replay to a missing queue): declared again
        purge_consumer_queues(conn)


def purge_consumer_queues(conn) -> None:
    """Empty every consumer queue and its dead-letter queue."""
    channel = conn.default_channel
    for queue in catalogue.CONSUMER_QUEUES:
        channel.queue_purge(queue)
        channel.queue_purge(catalogue.dead_letter_queue(queue))


def make_order(owner, **overrides) -> Order:
    fields = {
        "product_name": "book",
        "quantity": 1,
        "price": Decimal("10.00"),
        "currency": "EUR",
        "buyer": f"buyer-{uuid.uuid4().hex[:8]}@example.com",
    }
    fields.update(overrides)
    return order_create(owner=owner, **fields)


def envelope_for(event: DomainEvent, *, event_id: uuid.UUID | None = None) -> Envelope:
    """An envelope as the relay would send it, round-tripped through JSON-compatible form."""
    envelope = Envelope(
        event_id=event_id or uuid.uuid4(),
        event_type=event.event_type,
        version=event.version,
        occurred_at=datetime.now(UTC),
        aggregate_id=event.aggregate_id,
        correlation_id="test-correlation",
        causation_id=None,
        payload=event.to_payload(),
    )
    return Envelope.from_wire(envelope.to_wire())
