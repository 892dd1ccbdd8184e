"""Fraud rules: amount limit, blocklist, per-buyer velocity; one decision per order."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from fraud.models import BlockedBuyer, FraudCheck
from fraud.services import fraud_check_order
from ordering.messaging.models import OutboxEvent

pytestmark = pytest.mark.django_db


def check(buyer="alice", amount="100.00", at=None):
    return fraud_check_order(
        order_id=str(uuid.uuid4()),
        buyer=buyer,
        amount=Decimal(amount),
        currency="EUR",
        order_created_at=at or timezone.now(),
    )


def test_fraud_check_approves_ordinary_order_and_publishes_decision():
    result = check()
    assert not result.rejected
    event = OutboxEvent.objects.get(aggregate_id=str(result.order_id))
    assert event.event_type == "fraud.check.completed"
    assert event.payload["decision"] == "approved"


def test_fraud_check_rejects_amount_over_limit(settings):
    settings.FRAUD_AMOUNT_LIMIT = Decimal("10000.00")
    assert not check(amount="10000.00").rejected
    result = check(amount="10000.01")
    assert result.rejected
    assert result.reasons == ["amount_over_limit"]


def test_fraud_check_rejects_blocked_buyer():
    BlockedBuyer.objects.create(buyer="mallory", reason="chargebacks")
    assert check(buyer="mallory").reasons == ["buyer_blocked"]


def test_fraud_check_rejects_buyer_over_velocity_limit(settings):
    settings.FRAUD_VELOCITY_MAX_ORDERS = 3
    settings.FRAUD_VELOCITY_WINDOW_MINUTES = 10
    now = timezone.now()
    results = [check(buyer="bob", at=now + timedelta(seconds=i)) for i in range(4)]
    assert [r.rejected for r in results] == [False, False, False, True]
    assert results[-1].reasons == ["velocity_exceeded"]
    # Outside the window the buyer is fine again.
    assert not check(buyer="bob", at=now + timedelta(minutes=11)).rejected


def test_fraud_check_is_decided_once_per_order():
    order_id = str(uuid.uuid4())
    first = fraud_check_order(
        order_id=order_id, buyer="c", amount=Decimal("1"), currency="EUR", order_created_at=timezone.now()
    )
    BlockedBuyer.objects.create(buyer="c")
    again = fraud_check_order(
        order_id=order_id, buyer="c", amount=Decimal("1"), currency="EUR", order_created_at=timezone.now()
    )
    assert again.pk == first.pk and not again.rejected
    assert FraudCheck.objects.count() == 1
    assert OutboxEvent.objects.filter(event_type="fraud.check.completed").count() == 1
