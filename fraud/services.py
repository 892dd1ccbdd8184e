"""Fraud's public service: billing calls `fraud_check_order` synchronously inside its consumer.

This is the one place another app calls into fraud directly: the seed design couples billing
tightly to fraud ("any indication of fraud should cancel the order right away").
"""

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from fraud.models import BlockedBuyer, FraudCheck

logger = logging.getLogger(__name__)

RULE_SCORES = {"buyer_blocked": 100, "amount_over_limit": 80, "velocity_exceeded": 60}


@transaction.atomic
def fraud_check_order(
    *, order_id: str, buyer: str, amount: Decimal, currency: str, order_created_at: datetime
) -> FraudCheck:
    """Decide on an order once; later calls return the same decision (idempotent per order).

    Checks of one buyer are serialised (advisory lock), so two concurrent orders cannot both
    slip under the velocity limit.
    """
    existing = FraudCheck.objects.filter(order_id=order_id).first()
    if existing:
        return existing
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"fraud:{buyer}"])
    existing = FraudCheck.objects.filter(order_id=order_id).first()
    if existing:
        return existing
    reasons = _rules_hit(buyer=buyer, amount=amount, order_created_at=order_created_at)
    check = FraudCheck.decide(
        order_id=order_id,
        buyer=buyer,
        amount=amount,
        currency=currency,
        order_created_at=order_created_at,
        reasons=reasons,
        score=min(100, sum(RULE_SCORES[r] for r in reasons)),
    )
    check.save()
    logger.info("fraud: order %s %s %s", order_id, check.decision, reasons or "")
    return check


def _rules_hit(*, buyer: str, amount: Decimal, order_created_at: datetime) -> list[str]:
    reasons = []
    if BlockedBuyer.objects.filter(buyer=buyer).exists():
        reasons.append("buyer_blocked")
    if amount > settings.FRAUD_AMOUNT_LIMIT:
        reasons.append("amount_over_limit")
    window = timedelta(minutes=settings.FRAUD_VELOCITY_WINDOW_MINUTES)
    recent = FraudCheck.objects.filter(
        buyer=buyer, order_created_at__gt=order_created_at - window, order_created_at__lte=order_created_at
    ).count()
    if recent >= settings.FRAUD_VELOCITY_MAX_ORDERS:
        reasons.append("velocity_exceeded")
    return reasons
