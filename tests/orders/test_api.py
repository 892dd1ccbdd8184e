"""The orders API: what a client can do, and what it can never do."""

import io
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import IntegrityError, transaction
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import ParseError
from rest_framework.test import APIClient

from ordering.messaging.models import OutboxEvent
from ordering.parsers import JSONParser
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


def test_staff_without_the_view_permission_see_only_their_own_orders(user):
    make_order(user)
    staff_user = get_user_model().objects.create_user(username="ops", is_staff=True)
    staff = APIClient()
    staff.force_authenticate(staff_user)
    assert staff.get("/api/orders/").json()["count"] == 0
    assert staff.get(f"/api/orders/{Order.objects.get().id}/").status_code == 404


def test_users_with_the_view_order_permission_see_all_orders(user):
    make_order(user)
    make_order(get_user_model().objects.create_user(username="other"))
    auditor = get_user_model().objects.create_user(username="auditor")
    auditor.user_permissions.add(Permission.objects.get(codename="view_order", content_type__app_label="orders"))
    client = APIClient()
    client.force_authenticate(auditor)
    assert client.get("/api/orders/").json()["count"] == 2


def test_an_order_whose_total_does_not_fit_is_refused_before_anything_is_written(api_client, settings):
    # 101 x 9,999,999,999.99 overflows every amount column (numeric(14, 2)).
    overflow = {**VALID, "quantity": 101, "price": "9999999999.99"}
    response = api_client.post("/api/orders/", overflow, format="json")
    assert response.status_code == 400
    assert "may not exceed" in response.json()["price"][0]
    settings.ORDER_AMOUNT_MAX = Decimal("1000.00")
    assert (
        api_client.post("/api/orders/", {**VALID, "quantity": 5, "price": "200.01"}, format="json").status_code == 400
    )
    assert not Order.objects.exists()
    assert not OutboxEvent.objects.exists()
    assert (
        api_client.post("/api/orders/", {**VALID, "quantity": 5, "price": "200.00"}, format="json").status_code == 201
    )


def test_the_database_refuses_an_order_total_no_amount_column_can_hold(user):
    with pytest.raises(IntegrityError, match="order_amount_fits"), transaction.atomic():
        make_order(user, quantity=101, price=Decimal("9999999999.99"))


def test_a_failure_while_building_the_response_rolls_the_order_back(api_client, monkeypatch):
    def broken(self, order):
        raise ValueError("cannot render")

    monkeypatch.setattr(OrderSerializer, "to_representation", broken)
    client_that_sees_errors = api_client
    client_that_sees_errors.raise_request_exception = False
    response = client_that_sees_errors.post("/api/orders/", VALID, format="json")
    assert response.status_code == 500
    assert not Order.objects.exists()
    assert not OutboxEvent.objects.exists()


@pytest.mark.parametrize("buyer", ["not-an-email", "alice@", "@example.com", "a" * 250 + "@x.io"])
def test_the_buyer_must_be_an_email_address(api_client, buyer):
    response = api_client.post("/api/orders/", {**VALID, "buyer": buyer}, format="json")
    assert response.status_code == 400
    assert "buyer" in response.json()


def test_the_buyer_is_stored_in_one_spelling(api_client):
    response = api_client.post("/api/orders/", {**VALID, "buyer": "  Alice@Example.COM "}, format="json")
    assert response.status_code == 201
    assert response.json()["buyer"] == "alice@example.com"
    assert OutboxEvent.objects.get().payload["buyer"] == "alice@example.com"


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


@pytest.mark.parametrize("depth", [1_500, 100_000])
def test_json_nested_deep_is_a_400_not_a_500(api_client, depth):
    # Python 3.12's decoder gives up at about 1,500 levels, 3.13's far deeper: both must be 400s.
    body = '{"product_name": ' + "[" * depth + "]" * depth + "}"
    response = api_client.post("/api/orders/", body, content_type="application/json")
    assert response.status_code == 400
    assert not Order.objects.exists()


def test_json_too_deep_for_the_decoder_is_a_parse_error():
    with pytest.raises(ParseError, match="nested too deeply"):
        JSONParser().parse(io.BytesIO(b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.parametrize("sent", ["x" * 8000, "two words", "new\\nline", "<script>", ""])
def test_a_correlation_id_of_another_shape_is_replaced_not_echoed(api_client, sent, caplog):
    response = api_client.post("/api/orders/", VALID, format="json", HTTP_X_CORRELATION_ID=sent)
    assert response.status_code == 201
    generated = response["X-Correlation-ID"]
    assert generated != sent
    assert len(generated) == 32
    assert OutboxEvent.objects.get().correlation_id == generated


def test_a_well_formed_correlation_id_is_kept(api_client):
    sent = "trace-7f3a:span.42_" + "a" * 81
    response = api_client.post("/api/orders/", VALID, format="json", HTTP_X_CORRELATION_ID=sent)
    assert response["X-Correlation-ID"] == sent
    assert OutboxEvent.objects.get().correlation_id == sent


def test_creating_an_order_logs_ids_not_the_buyers_address(api_client, caplog):
    with caplog.at_level("INFO"):
        assert api_client.post("/api/orders/", VALID, format="json").status_code == 201
    assert Order.objects.get().buyer == "alice@example.com"
    assert "created" in caplog.text
    assert "alice" not in caplog.text
