"""The orders API: what a client can do, and what it can never do."""

import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ordering.messaging.models import OutboxEvent
from orders.models import Order
from orders.serializers import OrderSerializer
from tests.conftest import make_order

pytestmark = pytest.mark.django_db

VALID = {"product_name": "Espresso machine", "quantity": 2, "price": "249.90", "buyer": "alice@example.com"}


def test_create_order_returns_201_pending_with_location(api_client, user):
    response = api_client.post("/api/orders/", VALID, format="json", HTTP_X_CORRELATION_ID="req-42")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "PENDING"
    assert body["amount"] == "499.80"
    assert body["currency"] == "EUR"
    assert body["owner"] == user.username
    assert response["Location"].endswith(f"/api/orders/{body['id']}/")
    assert OutboxEvent.objects.get(aggregate_id=body["id"]).correlation_id == "req-42"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price": "0"}, "price"),
        ({"price": "-1.00"}, "price"),
        ({"price": "1.001"}, "price"),
        ({"price": "abc"}, "price"),
        ({"quantity": 0}, "quantity"),
        ({"currency": "XXX"}, "currency"),
        ({"buyer": ""}, "buyer"),
        ({"product_name": None}, "product_name"),
        ({"status": "PROCESSED"}, "status"),
        ({"owner": 1}, "owner"),
        ({"id": str(uuid.uuid4())}, "id"),
    ],
)
def test_create_order_bad_input_is_400_with_field_errors_and_nothing_created(api_client, change, field):
    response = api_client.post("/api/orders/", {**VALID, **change}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Order.objects.exists()
    assert not OutboxEvent.objects.exists()


def test_create_order_requires_authentication():
    response = APIClient().post("/api/orders/", VALID, format="json")
    assert response.status_code == 401
    assert not Order.objects.exists()


def test_client_sees_only_its_own_orders(api_client, user):
    mine = make_order(user)
    other = make_order(get_user_model().objects.create_user(username="other"))
    assert api_client.get(f"/api/orders/{mine.id}/").status_code == 200
    assert api_client.get(f"/api/orders/{other.id}/").status_code == 404
    listed = api_client.get("/api/orders/").json()
    assert [o["id"] for o in listed["results"]] == [str(mine.id)]


def test_staff_see_all_orders(user):
    make_order(user)
    make_order(get_user_model().objects.create_user(username="other"))
    staff = APIClient()
    staff.force_authenticate(get_user_model().objects.create_user(username="ops", is_staff=True))
    assert staff.get("/api/orders/").json()["count"] == 2


def test_list_orders_filters_by_status(api_client, user):
    make_order(user)
    assert api_client.get("/api/orders/?status=PENDING").json()["count"] == 1
    assert api_client.get("/api/orders/?status=PROCESSED").json()["count"] == 0


def test_token_authentication(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    response = client.post("/api/orders/", VALID, format="json")
    assert response.status_code == 201
    assert response.json()["owner"] == user.username


@pytest.mark.parametrize("case", ["unknown token", "inactive user", "deleted token"])
def test_token_authentication_refuses_what_it_must(user, case):
    token = Token.objects.create(user=user)
    key = token.key
    if case == "unknown token":
        key = "0" * 40
    elif case == "inactive user":
        user.is_active = False
        user.save()
    else:
        token.delete()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.post("/api/orders/", VALID, format="json")
    assert response.status_code == 401
    assert not Order.objects.exists()


def test_an_order_renders_as_drf_renders_its_declared_fields(user):
    """OrderSerializer builds its output without DRF's per-instance field copies: same output."""
    pending = make_order(user)
    processed = make_order(user, quantity=3, price=Decimal("19.99"))
    processed.mark_processed(payment_reference="sim_ref")
    processed.record_fraud_decision(decision="approved", score=0, reasons=[])
    declined = make_order(user)
    declined.mark_payment_declined(reason="insufficient funds")
    declined.record_fraud_decision(decision="approved", score=0, reasons=[])
    for order in (pending, processed, declined):
        serializer = OrderSerializer(order)
        assert serializer.data == serializers.Serializer.to_representation(serializer, order)


def test_api_docs_and_schema_are_served(api_client):
    assert api_client.get("/api/schema/").status_code == 200
    assert api_client.get("/api/docs/").status_code == 200


def test_database_outage_is_503_with_retry_after(api_client, monkeypatch):
    from django.db import OperationalError

    from orders import apis

    def unavailable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(apis, "order_create", unavailable)
    response = api_client.post("/api/orders/", VALID, format="json")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
