"""Health endpoints: liveness of the process, readiness of what an order needs."""

from datetime import timedelta

import pytest
from django.utils import timezone

from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from tests.conftest import make_order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def consumers(broker):
    """A consumer on every consumer queue, as running workers would have."""
    channel = broker.channel()
    for queue in catalogue.CONSUMER_QUEUES:
        channel.basic_consume(queue=queue, callback=lambda message: None)
    yield
    channel.close()


def ready(client) -> tuple[int, dict]:
    response = client.get("/health/ready", HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


def test_liveness_needs_nothing_but_the_process(client):
    response = client.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_ready_when_database_broker_consumers_and_relay_are(client, consumers):
    status, checks = ready(client)
    assert status == 200, checks
    assert set(checks.values()) == {"OK"}
    assert len(checks) == 3


def test_not_ready_while_a_consumer_queue_has_no_consumer(client, broker):
    status, checks = ready(client)
    assert status == 500
    assert any("no consumer on billing.events, orders.events" in value for value in checks.values())


def test_not_ready_while_an_event_waits_too_long_for_the_relay(client, consumers, user):
    make_order(user)
    OutboxEvent.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    status, checks = ready(client)
    assert status == 500
    assert any("1 events unpublished for over 60 s" in value for value in checks.values())


def test_health_endpoints_answer_over_plain_http_in_production(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/health/live").status_code == 200
    assert client.get("/api/orders/").status_code == 301
