"""The Order aggregate: its status machine and the events its transitions stage."""

import uuid
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.lookups import LessThanOrEqual
from django.utils import timezone
from django_fsm import FSMField, transition

from ordering.messaging.outbox import EventSourcedModel
from orders.events import OrderCancelRequested, OrderCreated


class OrderStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    PROCESSED = "PROCESSED", "Processed"
    CANCELED_FRAUD = "CANCELED_FRAUD", "Canceled: fraud"
    PAYMENT_DECLINED = "PAYMENT_DECLINED", "Payment declined"
    # Cancellation requested; billing voids the payment or refunds it.
    CANCELING = "CANCELING", "Canceling"
    CANCELED = "CANCELED", "Canceled"  # before anything was charged
    REFUNDED = "REFUNDED", "Refunded"  # charged, then refunded in full


TERMINAL_STATUSES = frozenset(
    {
        OrderStatus.PROCESSED,
        OrderStatus.CANCELED_FRAUD,
        OrderStatus.PAYMENT_DECLINED,
        OrderStatus.CANCELED,
        OrderStatus.REFUNDED,
    }
)
# Where a cancellation can start: nothing charged yet, or charged and refundable.
CANCELABLE_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.PROCESSED})


class Order(EventSourcedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    product_name = models.CharField(max_length=200)
    quantity = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    price = models.DecimalField(max_digits=12, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))])
    currency = models.CharField(max_length=3)
    buyer = models.CharField(max_length=254, db_index=True)
    # Only the transition methods below change it: every change is guarded and leaves an event.
    status = FSMField(default=OrderStatus.PENDING, choices=OrderStatus.choices, db_index=True)
    status_reason = models.CharField(max_length=200, blank=True)
    # What other apps told us through their events (orders never reads their tables).
    fraud_decision = models.CharField(max_length=20, blank=True)
    fraud_score = models.PositiveSmallIntegerField(null=True, blank=True)
    fraud_reasons = models.JSONField(default=list, blank=True)
    payment_reference = models.CharField(max_length=100, blank=True)
    refund_reference = models.CharField(max_length=100, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    correlation_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        # Staff who may ask billing to void or refund any order, in the admin (its cancel button
        # and action); an API client cancels its own orders, and only those, without it.
        permissions = [("cancel_order", "Can request the cancellation of any order")]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gt=0), name="order_price_positive"),
            models.CheckConstraint(condition=models.Q(quantity__gte=1), name="order_quantity_positive"),
            # The total fits every amount column downstream (payments, fraud checks: numeric(14, 2)).
            models.CheckConstraint(
                condition=LessThanOrEqual(models.F("price") * models.F("quantity"), settings.ORDER_AMOUNT_CEILING),
                name="order_amount_fits",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.product_name} x{self.quantity} for {self.buyer} ({self.status})"

    @property
    def amount(self) -> Decimal:
        return self.price * self.quantity

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def waiting_since(self) -> datetime:
        """When the order began to wait for billing in its status: its cancellation request, or its creation.

        orders/selectors.py computes the same in SQL for the stuck-order queries.
        """
        if self.status == OrderStatus.CANCELING and self.cancel_requested_at is not None:
            return self.cancel_requested_at
        return self.created_at

    def stage_created(self) -> None:
        self.stage_event(
            OrderCreated(
                order_id=str(self.id),
                product_name=self.product_name,
                quantity=self.quantity,
                unit_price=str(self.price),
                amount=str(self.amount),
                currency=self.currency,
                buyer=self.buyer,
                created_at=self.created_at.isoformat(),
            )
        )

    def record_fraud_decision(self, *, decision: str, score: int, reasons: list[str]) -> None:
        """What fraud decided, as reported by billing's outcome (orders never reads fraud's tables)."""
        self.fraud_decision = decision
        self.fraud_score = score
        self.fraud_reasons = reasons

    @transition(field=status, source=OrderStatus.PENDING, target=OrderStatus.PROCESSED)
    def mark_processed(self, *, payment_reference: str) -> None:
        self.payment_reference = payment_reference
        self.status_reason = ""

    # A cancellation does not stop billing's outcome from landing: it is what happened to the
    # payment, and billing has nothing left to void or refund after a decline or a block.
    @transition(field=status, source=[OrderStatus.PENDING, OrderStatus.CANCELING], target=OrderStatus.CANCELED_FRAUD)
    def mark_canceled_fraud(self, *, reason: str) -> None:
        self.status_reason = reason

    @transition(field=status, source=[OrderStatus.PENDING, OrderStatus.CANCELING], target=OrderStatus.PAYMENT_DECLINED)
    def mark_payment_declined(self, *, reason: str) -> None:
        self.status_reason = reason

    @transition(field=status, source=list(CANCELABLE_STATUSES), target=OrderStatus.CANCELING)
    def request_cancel(self, *, requested_by: str) -> None:
        self.cancel_requested_at = timezone.now()
        self.stage_event(
            OrderCancelRequested(
                order_id=str(self.id),
                amount=str(self.amount),
                currency=self.currency,
                buyer=self.buyer,
                requested_at=self.cancel_requested_at.isoformat(),
                requested_by=requested_by,
            )
        )

    @transition(field=status, source=OrderStatus.CANCELING, target=OrderStatus.CANCELED)
    def mark_canceled(self) -> None:
        self.status_reason = "canceled before payment"

    @transition(field=status, source=OrderStatus.CANCELING, target=OrderStatus.REFUNDED)
    def mark_refunded(self, *, payment_reference: str, refund_reference: str) -> None:
        self.payment_reference = payment_reference
        self.refund_reference = refund_reference
        self.status_reason = "canceled, refunded in full"
