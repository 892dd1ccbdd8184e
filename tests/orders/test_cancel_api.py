"""POST /api/orders/{id}/cancel/: who may cancel what, what it records, and what a repeat or a race does."""

import threading
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from rest_framework import serializers
from rest_framework.test import APIClient

from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from orders import apis
from orders.models import Order, OrderStatus
from orders.serializers import OrderSerializer
from orders.services import (
    order_mark_canceled,
    order_request_cancel,
)
from tests.conftest import make_order
from tests.orders.statuses import SETUP, processed, refunded
from tests.orders.test_idempotency import token_client

pytestmark = pytest.mark.django_db


def cancel(client: APIClient, order: Order, key: str | None = None):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(f"/api/orders/{order.id}/cancel/", format="json", **headers)


def cancel_events(order: Order) -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CANCEL_REQUESTED))


# Each ends in a status a cancellation can no longer change, through the services that put it there.
OVER = [OrderStatus.CANCELED_FRAUD, OrderStatus.PAYMENT_DECLINED, OrderStatus.CANCELED, OrderStatus.REFUNDED]


def test_cancel_answers_202_canceling_and_records_one_cancel_requested_event(api_client, user):
    order = make_order(user, quantity=2, price=Decimal("24.50"))
    response = cancel(api_client, order)
    assert response.status_code == 202, response.content
    assert response.json()["status"] == OrderStatus.CANCELING
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELING
    [event] = cancel_events(order)
    assert (event.version, event.published_at) == (1, None)
    assert event.payload == {
        "order_id": str(order.id),
        "amount": "49.00",
        "currency": "EUR",
        "buyer": order.buyer,
        "requested_at": order.cancel_requested_at.isoformat(),
        "requested_by": f"api:{user.pk}",
    }


def test_a_repeated_cancel_answers_202_with_the_order_as_it_is_and_records_no_second_event(api_client, user):
    order = make_order(user)
    first = cancel(api_client, order)
    again = cancel(api_client, order)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert len(cancel_events(order)) == 1


def test_a_processed_order_can_be_canceled(api_client, user):
    order = make_order(user)
    processed(order)
    response = cancel(api_client, order)
    assert response.status_code == 202
    assert response.json()["status"] == OrderStatus.CANCELING
    assert response.json()["payment"] == {"outcome": "captured", "reference": "sim_1"}
    assert len(cancel_events(order)) == 1


@pytest.mark.parametrize("status", OVER)
def test_an_order_that_is_over_is_409_order_not_cancelable_and_nothing_is_recorded(api_client, user, status):
    order = make_order(user)
    SETUP[status](order)
    order.refresh_from_db()
    assert order.status == status
    events_before = OutboxEvent.objects.count()
    response = cancel(api_client, order)
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"The order is {status} and can no longer be canceled.",
        "code": "order_not_cancelable",
    }
    after = Order.objects.get(pk=order.pk)
    assert (after.status, after.updated_at) == (status, order.updated_at)
    assert OutboxEvent.objects.count() == events_before


def test_another_clients_order_is_404_and_stays_as_it_is(api_client):
    other = make_order(get_user_model().objects.create_user(username="other-client"))
    response = cancel(api_client, other)
    assert response.status_code == 404
    other.refresh_from_db()
    assert (other.status, other.cancel_requested_at) == (OrderStatus.PENDING, None)
    assert cancel_events(other) == []


def test_cancel_requires_authentication(user):
    order = make_order(user)
    response = cancel(APIClient(), order)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response
    # A browser session must send its CSRF token, as on every unsafe method of the API.
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(user)
    assert cancel(session, order).status_code == 403
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING
    assert cancel_events(order) == []


def test_an_idempotency_key_replays_the_first_answer_and_is_refused_on_another_orders_path(api_client, user):
    order, another = make_order(user), make_order(user)
    first = cancel(api_client, order, key="cancel-1")
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first
    # Meanwhile billing voided it: the replay is the first answer, not the order as it is now.
    order_mark_canceled(order_id=str(order.id))
    again = cancel(api_client, order, key="cancel-1")
    assert (again.status_code, again["Idempotent-Replayed"]) == (202, "true")
    assert again.json() == first.json()
    assert again.json()["status"] == OrderStatus.CANCELING
    assert len(cancel_events(order)) == 1

    elsewhere = cancel(api_client, another, key="cancel-1")
    assert elsewhere.status_code == 422
    assert elsewhere.json()["code"] == "idempotency_key_mismatch"
    another.refresh_from_db()
    assert another.status == OrderStatus.PENDING
    assert cancel_events(another) == []


@pytest.mark.django_db(transaction=True)
def test_cancels_at_once_record_one_event(user, monkeypatch):
    """Requests in their own connections and transactions, released together right before the service reads
    the order: they serialise on the order's row, and only the first records an event."""
    order = make_order(user)
    threads = 6
    at_the_service = threading.Barrier(threads)
    real = apis.order_request_cancel

    def together(**arguments):
        at_the_service.wait(timeout=60)
        return real(**arguments)

    monkeypatch.setattr(apis, "order_request_cancel", together)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def request(client: APIClient) -> None:
        try:
            response = cancel(client, order)
            with lock:
                answers.append((response.status_code, response.json()["status"]))
        finally:
            connection.close()

    workers = [threading.Thread(target=request, args=(token_client(user),)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert answers == [(202, OrderStatus.CANCELING)] * threads
    assert len(cancel_events(order)) == 1


def test_a_refunded_orders_payment_names_the_charge_and_its_refund(api_client, user):
    order = make_order(user)
    refunded(order)
    body = api_client.get(f"/api/orders/{order.id}/").json()
    assert (body["status"], body["status_reason"]) == (OrderStatus.REFUNDED, "canceled, refunded in full")
    assert body["payment"] == {"outcome": "refunded", "reference": "sim_1", "refund_reference": "sim_re_1"}


def test_canceling_canceled_and_refunded_orders_render_as_drf_renders_them(user):
    canceling, canceled, refunded_order = make_order(user), make_order(user), make_order(user)
    order_request_cancel(order_id=canceling.id, requested_by="test")
    SETUP[OrderStatus.CANCELED](canceled)
    refunded(refunded_order)
    for order in Order.objects.filter(pk__in=[canceling.pk, canceled.pk, refunded_order.pk]):
        serializer = OrderSerializer(order)
        assert serializer.data == serializers.Serializer.to_representation(serializer, order)


def test_seeing_every_order_is_no_licence_to_cancel_them(user):
    """orders.view_order (auditors) reads every client's orders; the API cancels only a client's own. Staff
    cancel others' orders in the admin (orders.cancel_order), where it is audited."""
    order = make_order(user)
    for permissions in (["view_order"], ["view_order", "cancel_order"]):
        someone = get_user_model().objects.create_user(username=f"staff-{len(permissions)}", is_staff=True)
        for codename in permissions:
            someone.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="orders"))
        client = APIClient()
        client.force_authenticate(someone)
        assert client.get(f"/api/orders/{order.id}/").status_code == 200
        assert cancel(client, order).status_code == 404
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING
    assert cancel_events(order) == []
