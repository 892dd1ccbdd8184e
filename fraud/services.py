"""Fraud's public service: billing calls `fraud_check_orders` synchronously inside its consumer.

This is the one place another app calls into fraud directly: the seed design couples billing
tightly to fraud ("any indication of fraud should cancel the order right away").
"""

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from fraud.models import BlockedBuyer, FraudCheck, FraudDecision
from orders.events import normalize_buyer

logger = logging.getLogger(__name__)

RULE_SCORES = {"buyer_blocked": 100, "amount_over_limit": 80, "velocity_exceeded": 60}

_INSERT_SQL = f"""
    INSERT INTO {FraudCheck._meta.db_table}
           (order_id, buyer, amount, currency, order_created_at, decision, score, reasons, checked_at)
    SELECT c.order_id, c.buyer, c.amount, c.currency, c.order_created_at, c.decision, c.score, c.reasons::jsonb,
           c.checked_at
      FROM unnest(%s::uuid[], %s::varchar[], %s::numeric[], %s::varchar[], %s::timestamptz[], %s::varchar[],
                  %s::smallint[], %s::text[], %s::timestamptz[])
           AS c(order_id, buyer, amount, currency, order_created_at, decision, score, reasons, checked_at)
"""

_RULE_INPUTS_SQL = f"""
    SELECT NULL::uuid, buyer, NULL::timestamptz FROM {BlockedBuyer._meta.db_table} WHERE buyer = ANY(%s::varchar[])
    UNION ALL
    SELECT order_id, buyer, order_created_at FROM {FraudCheck._meta.db_table}
     WHERE (buyer = ANY(%s::varchar[]) AND order_created_at > %s AND order_created_at <= %s)
        OR order_id = ANY(%s::uuid[])
"""


@dataclass(frozen=True)
class OrderToCheck:
    order_id: str
    buyer: str
    amount: Decimal
    currency: str
    order_created_at: datetime


@dataclass(frozen=True)
class FraudVerdict:
    """Fraud's decision on one order, as other apps see it."""

    order_id: str
    decision: str
    score: int
    reasons: list[str]

    @property
    def rejected(self) -> bool:
        return self.decision == FraudDecision.REJECTED

    @classmethod
    def of(cls, check: FraudCheck) -> "FraudVerdict":
        return cls(order_id=str(check.order_id), decision=check.decision, score=check.score, reasons=check.reasons)


@transaction.atomic(savepoint=False)
def fraud_check_orders(*, orders: Sequence[OrderToCheck]) -> dict[str, FraudVerdict]:
    """Decide on each order once; an order decided before gets its first decision back.

    Checks of one buyer are serialised (an advisory lock per buyer, held to the end of the
    caller's transaction), so two concurrent orders cannot both slip under the velocity limit;
    orders of one buyer in the same call count for each other in creation order.
    """
    if not orders:
        return {}
    # Events published before buyers were normalized at the API may spell one buyer differently.
    orders = [replace(order, buyer=normalize_buyer(order.buyer)) for order in orders]
    buyers = sorted({order.buyer for order in orders})
    with connection.cursor() as cursor:
        # One fixed order (sorted) for every caller: two batches sharing buyers cannot deadlock.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('fraud:' || b, 0)) FROM unnest(%s::text[]) AS b",
            [buyers],
        )
    window = timedelta(minutes=settings.FRAUD_VELOCITY_WINDOW_MINUTES)
    ids = [order.order_id for order in orders]
    with connection.cursor() as cursor:
        # What the rules need, in one query: which buyers are blocked, and the checks that count
        # for velocity (or that already decided one of these orders).
        cursor.execute(
            _RULE_INPUTS_SQL,
            [
                buyers,
                buyers,
                min(o.order_created_at for o in orders) - window,
                max(o.order_created_at for o in orders),
                ids,
            ],
        )
        rows = cursor.fetchall()
    blocked = set()
    checked_at: dict[str, list[datetime]] = defaultdict(list)
    decided_before = set()
    for order_id, buyer, created_at in rows:
        if order_id is None:
            blocked.add(buyer)
            continue
        checked_at[buyer].append(created_at)
        decided_before.add(str(order_id))
    checks = {str(c.order_id): c for c in FraudCheck.objects.filter(order_id__in=decided_before & set(ids))}
    new = []
    for order in sorted(orders, key=lambda o: o.order_created_at):
        if order.order_id in checks:
            continue
        recent = sum(
            1 for t in checked_at[order.buyer] if order.order_created_at - window < t <= order.order_created_at
        )
        reasons = _rules_hit(blocked=order.buyer in blocked, amount=order.amount, recent=recent)
        check = FraudCheck.decide(
            order_id=order.order_id,
            buyer=order.buyer,
            amount=order.amount,
            currency=order.currency,
            order_created_at=order.order_created_at,
            reasons=reasons,
            score=min(100, sum(RULE_SCORES[r] for r in reasons)),
        )
        checked_at[order.buyer].append(order.order_created_at)
        checks[order.order_id] = check
        new.append(check)
        logger.info("fraud: order %s %s %s", order.order_id, check.decision, reasons or "")
    _insert(new)
    return {order_id: FraudVerdict.of(check) for order_id, check in checks.items()}


def _insert(checks: list[FraudCheck]) -> None:
    """One statement for the batch's new decisions (a plain insert: every order runs it).

    A concurrent first decision on one of these orders fails it on the unique order id, and the
    caller's transaction with it: the retry then finds that decision.
    """
    if not checks:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                [c.order_id for c in checks],
                [c.buyer for c in checks],
                [c.amount for c in checks],
                [c.currency for c in checks],
                [c.order_created_at for c in checks],
                [c.decision for c in checks],
                [c.score for c in checks],
                [json.dumps(c.reasons) for c in checks],
                [c.checked_at for c in checks],
            ],
        )


def fraud_check_order(
    *, order_id: str, buyer: str, amount: Decimal, currency: str, order_created_at: datetime
) -> FraudVerdict:
    """Decide on one order (see fraud_check_orders)."""
    order = OrderToCheck(order_id, buyer, amount, currency, order_created_at)
    return fraud_check_orders(orders=[order])[order_id]


def _rules_hit(*, blocked: bool, amount: Decimal, recent: int) -> list[str]:
    reasons = []
    if blocked:
        reasons.append("buyer_blocked")
    if amount > settings.FRAUD_AMOUNT_LIMIT:
        reasons.append("amount_over_limit")
    if recent >= settings.FRAUD_VELOCITY_MAX_ORDERS:
        reasons.append("velocity_exceeded")
    return reasons
