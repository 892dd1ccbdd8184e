"""How many SQL statements each stage of an order costs, pinned: a regression here fails CI.

The counts are what the benchmark's numbers rest on (README, "Benchmark"); change one only with
a measurement that shows why.
"""

import json

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.consumer import Outcome
from ordering.messaging.models import OutboxEvent
from ordering.messaging.relay import OutboxRelay
from tests.conftest import make_order
from tests.consumers import deliver
from tests.events import order_created, payment_captured

pytestmark = pytest.mark.django_db(transaction=True)

ORDER = {"product_name": "lamp", "quantity": 1, "price": "30.00", "buyer": "q@example.com"}


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
    envelopes = [payment_captured(make_order(user)) for _ in range(orders)]
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
