"""The happy paths through real processes: API -> outbox -> relay -> billing + fraud -> orders."""

import pytest
from rest_framework.test import APIClient

from billing.models import Payment, SimulatedCharge
from ordering import catalogue
from ordering.messaging.models import OutboxEvent, ProcessedEvent
from tests.integration.conftest import wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def post_order(user, **fields) -> dict:
    client = APIClient()
    client.force_authenticate(user)
    body = {"product_name": "lamp", "price": "30.00", "buyer": f"{user.username}@example.com", **fields}
    response = client.post("/api/orders/", body, format="json", HTTP_X_CORRELATION_ID=f"corr-{user.username}")
    assert response.status_code == 201, response.content
    return response.json()


def test_order_is_processed_end_to_end(system, user):
    order = post_order(user, quantity=2)
    processed = wait_for_status(order["id"], "PROCESSED")
    payment = Payment.objects.get(order_id=order["id"])
    assert payment.status == "CAPTURED"
    assert processed.payment_reference == payment.gateway_reference
    assert SimulatedCharge.objects.filter(idempotency_key=payment.idempotency_key).count() == 1
    # The fraud decision reached the order too, with the outcome it led to (one route).
    assert (processed.fraud_decision, processed.fraud_score, processed.fraud_reasons) == ("approved", 0, [])
    consumers = set(ProcessedEvent.objects.filter(aggregate_id=order["id"]).values_list("consumer", flat=True))
    assert catalogue.BILLING_HANDLE_ORDER_CREATED in consumers
    assert catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED in consumers
    # One correlation id through every hop; each event caused by the one before it.
    events = {e.event_type: e for e in OutboxEvent.objects.filter(aggregate_id=order["id"])}
    assert {e.correlation_id for e in events.values()} == {f"corr-{user.username}"}
    created = events[catalogue.ORDER_CREATED]
    assert events[catalogue.PAYMENT_CAPTURED].causation_id == created.id
    assert set(events) == {catalogue.ORDER_CREATED, catalogue.PAYMENT_CAPTURED}
    assert all(e.published_at for e in events.values())


def test_fraudulent_order_is_canceled(system, user):
    order = post_order(user, price="10000.01")
    canceled = wait_for_status(order["id"], "CANCELED_FRAUD")
    assert "amount_over_limit" in canceled.status_reason
    assert not SimulatedCharge.objects.exists()


def test_declined_payment_is_a_terminal_status(system, user):
    order = post_order(user, price="6000.00")
    declined = wait_for_status(order["id"], "PAYMENT_DECLINED")
    assert declined.status_reason == "insufficient funds"
    assert Payment.objects.get(order_id=order["id"]).status == "DECLINED"
