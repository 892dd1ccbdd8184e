"""How many SQL statements each stage of an order costs, pinned: a regression here fails CI.

The counts are what the benchmark's numbers rest on (README, "Benchmark"); change one only with
a measurement that shows why.
"""

import json
import uuid

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from billing.events import PaymentCaptured
from ordering import catalogue
from ordering.celery import app
from ordering.messaging.consumer import Outcome
from ordering.messaging.models import OutboxEvent
from ordering.messaging.relay import OutboxRelay
from orders.events import OrderCreated
from tests.conftest import envelope_for, make_order
from tests.consumers import deliver

pytestmark = pytest.mark.django_db(transaction=True)

ORDER = {"product_name": "lamp", "quantity": 1, "price": "30.00", "buyer": "q@example.com"}


def order_created() -> object:
    order_id = str(uuid.uuid4())
    return envelope_for(
        OrderCreated(
            order_id=order_id, product_name="lamp", quantity=1, unit_price="30.00", amount="30.00", currency="EUR",
            buyer=f"{order_id[:8]}@example.com", created_at=timezone.now().isoformat(),
        )
    )  # fmt: skip


def captured(order) -> object:
    return envelope_for(
        PaymentCaptured(
            order_id=str(order.id), payment_id=str(uuid.uuid4()), amount="30.00", currency="EUR",
            gateway_reference="sim_1", fraud_score=0, fraud_reasons=[],
        )
    )  # fmt: skip


def test_creating_an_order_over_the_api(user, django_assert_num_queries):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    # token and user; BEGIN, order, outbox row, COMMIT
    with django_assert_num_queries(5):
        assert client.post("/api/orders/", json.dumps(ORDER), content_type="application/json").status_code == 201


@pytest.mark.parametrize(("orders", "queries"), [(1, 13), (10, 31)])
def test_billing_a_batch(orders, queries, django_assert_num_queries):
    # BEGIN, payments, buyer locks, rule inputs, decisions, COMMIT; one charge per order;
    # BEGIN, inbox, payment locks, per order (payment, outbox row), COMMIT
    envelopes = [order_created() for _ in range(orders)]
    with django_assert_num_queries(queries):
        assert deliver(catalogue.BILLING_HANDLE_ORDER_CREATED, *envelopes) == [Outcome.ACK] * orders


@pytest.mark.parametrize(("orders", "queries"), [(1, 5), (10, 23)])
def test_applying_a_batch_of_outcomes(user, orders, queries, django_assert_num_queries):
    # BEGIN, inbox, per order (lock, update), COMMIT
    envelopes = [captured(make_order(user)) for _ in range(orders)]
    with django_assert_num_queries(queries):
        assert deliver(catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED, *envelopes) == [Outcome.ACK] * orders


@pytest.mark.parametrize("events", [1, 50])
def test_relaying_a_batch(user, events, broker, django_assert_num_queries):
    for _ in range(events):
        make_order(user)
    relay = OutboxRelay(app)
    relay.connect()
    # BEGIN, take and mark the batch, COMMIT
    with django_assert_num_queries(3):
        assert relay.publish_pending() == events
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
