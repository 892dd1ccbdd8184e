"""Fraud checks (one per order, immutable) and the buyer blocklist.

A check emits no event of its own: billing, which asks for it, carries the decision in its
outcome event.
"""

from decimal import Decimal

from django.db import models
from django.utils import timezone

from orders.events import normalize_buyer


class FraudDecision(models.TextChoices):
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class FraudCheck(models.Model):
    order_id = models.UUIDField(unique=True)
    buyer = models.CharField(max_length=254)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    order_created_at = models.DateTimeField()
    decision = models.CharField(max_length=20, choices=FraudDecision.choices)
    score = models.PositiveSmallIntegerField()
    reasons = models.JSONField(default=list)
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["buyer", "order_created_at"], name="fraud_velocity_idx")]

    def __str__(self) -> str:
        return f"{self.order_id}: {self.decision}"

    @property
    def rejected(self) -> bool:
        return self.decision == FraudDecision.REJECTED

    @classmethod
    def decide(
        cls,
        *,
        order_id: str,
        buyer: str,
        amount: Decimal,
        currency: str,
        order_created_at,
        reasons: list[str],
        score: int,
    ) -> "FraudCheck":
        return cls(
            order_id=order_id,
            buyer=buyer,
            amount=amount,
            currency=currency,
            order_created_at=order_created_at,
            decision=FraudDecision.REJECTED if reasons else FraudDecision.APPROVED,
            score=score,
            reasons=reasons,
        )


class BlockedBuyer(models.Model):
    """A buyer whose orders are always rejected; managed by operators in the admin."""

    buyer = models.CharField(max_length=254, unique=True)
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["buyer"]

    def __str__(self) -> str:
        return self.buyer

    def save(self, *args, **kwargs) -> None:
        # Stored as fraud compares it, however an operator typed it.
        self.buyer = normalize_buyer(self.buyer)
        super().save(*args, **kwargs)
