"""Fraud rules: amount limit, blocklist, per-buyer velocity; one decision per order."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from fraud.models import BlockedBuyer, FraudCheck
from fraud.services import OrderToCheck, fraud_check_order, fraud_check_orders
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


def test_fraud_check_approves_ordinary_order_and_records_it_without_an_event_of_its_own():
    result = check()
    assert not result.rejected
    assert (result.decision, result.score, result.reasons) == ("approved", 0, [])
    assert FraudCheck.objects.get(order_id=result.order_id).decision == "approved"
    # The decision travels in billing's outcome event, not in one of fraud's.
    assert not OutboxEvent.objects.exists()


def test_fraud_check_rejects_amount_over_limit(settings):
    settings.FRAUD_AMOUNT_LIMIT = Decimal("10000.00")
    assert not check(amount="10000.00").rejected
    result = check(amount="10000.01")
    assert result.rejected
    assert result.reasons == ["amount_over_limit"]


def test_fraud_check_rejects_blocked_buyer():
    BlockedBuyer.objects.create(buyer="mallory", reason="chargebacks")
    assert check(buyer="mallory").reasons == ["buyer_blocked"]


@pytest.mark.parametrize(
    ("listed_as", "ordered_as"),
    [("mallory@example.com", "MALLORY@EXAMPLE.COM"), ("Mallory@Example.com ", "mallory@example.com")],
)
def test_the_blocklist_holds_whatever_the_letter_case(listed_as, ordered_as):
    BlockedBuyer.objects.create(buyer=listed_as)
    assert BlockedBuyer.objects.get().buyer == "mallory@example.com"
    assert check(buyer=ordered_as).reasons == ["buyer_blocked"]


def test_the_velocity_rule_counts_every_spelling_of_a_buyer(settings):
    settings.FRAUD_VELOCITY_MAX_ORDERS = 3
    now = timezone.now()
    spellings = ["bob@example.com", "BOB@example.com", "Bob@Example.com", "bob@EXAMPLE.COM"]
    results = [check(buyer=buyer, at=now + timedelta(seconds=i)) for i, buyer in enumerate(spellings)]
    assert [r.rejected for r in results] == [False, False, False, True]
    assert set(FraudCheck.objects.values_list("buyer", flat=True)) == {"bob@example.com"}


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
    assert again == first and not again.rejected
    assert FraudCheck.objects.count() == 1


def test_orders_of_one_buyer_checked_together_count_for_each_other(settings):
    settings.FRAUD_VELOCITY_MAX_ORDERS = 2
    now = timezone.now()
    orders = [
        OrderToCheck(str(uuid.uuid4()), "dave", Decimal("5"), "EUR", now + timedelta(seconds=s)) for s in (2, 0, 1)
    ]
    verdicts = fraud_check_orders(orders=orders)
    # Decided in creation order: the third created (first in the list) is over the limit.
    assert [verdicts[o.order_id].rejected for o in orders] == [True, False, False]
    assert FraudCheck.objects.count() == 3
