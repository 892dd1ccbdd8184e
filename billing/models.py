"""Payments (one per order, charged at most once) and the simulated gateway's own records."""

import uuid
from decimal import Decimal

from django.db import connection, models
from django.utils import timezone

from billing.events import PaymentBlocked, PaymentCaptured, PaymentDeclined, PaymentRefunded, PaymentVoided
from ordering.messaging.outbox import EventSourcedModel


class PaymentStatus(models.TextChoices):
    # Fraud approved; the charge is (or was) in flight at the gateway under `idempotency_key`.
    CHARGING = "CHARGING", "Charging"
    CAPTURED = "CAPTURED", "Captured"
    DECLINED = "DECLINED", "Declined"
    BLOCKED = "BLOCKED", "Blocked (fraud)"
    # The order was canceled before anything was charged: a tombstone that a late OrderCreated
    # finds (one payment per order), so it charges nothing.
    VOIDED = "VOIDED", "Voided (canceled before payment)"
    # Captured, and the order canceled: the refund is (or was) in flight under `refund_idempotency_key`.
    REFUNDING = "REFUNDING", "Refunding"
    REFUNDED = "REFUNDED", "Refunded"


# Nothing left to charge (the charging flow is over for the order).
FINAL_PAYMENT_STATUSES = frozenset(
    {
        PaymentStatus.CAPTURED,
        PaymentStatus.DECLINED,
        PaymentStatus.BLOCKED,
        PaymentStatus.VOIDED,
        PaymentStatus.REFUNDING,
        PaymentStatus.REFUNDED,
    }
)


class Payment(EventSourcedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The order lives in the orders app; billing knows it only by id (from OrderCreated).
    order_id = models.UUIDField(unique=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    buyer = models.CharField(max_length=254)
    status = models.CharField(max_length=20, choices=PaymentStatus.choices, default=PaymentStatus.CHARGING)
    # Sent with every charge attempt of this payment: the gateway charges a key at most once.
    idempotency_key = models.CharField(max_length=100, unique=True)
    gateway_reference = models.CharField(max_length=100, blank=True)
    # The order's cancellation reached billing while the charge was in flight: whoever records
    # the charge's outcome refunds a capture at once (billing/services.py).
    cancel_requested = models.BooleanField(default=False)
    refund_reference = models.CharField(max_length=100, blank=True)
    outcome_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One captured payment per order, ever (order_id is unique too; this states intent
            # and survives a future split of payments into attempts).
            models.UniqueConstraint(
                fields=["order_id"], condition=models.Q(status="CAPTURED"), name="payment_one_capture_per_order"
            ),
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="payment_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.order_id}: {self.amount} {self.currency} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_PAYMENT_STATUSES

    @staticmethod
    def idempotency_key_for(order_id: str) -> str:
        return f"order-{order_id}"

    @property
    def refund_idempotency_key(self) -> str:
        """The key of this payment's one refund: every attempt sends it, so the gateway refunds once."""
        return f"refund-order-{self.order_id}"

    @classmethod
    def open(cls, *, order_id: str, amount: Decimal, currency: str, buyer: str) -> "Payment":
        """A payment about to be charged (fraud approved it), under the order's idempotency key."""
        return cls(
            order_id=order_id,
            amount=amount,
            currency=currency,
            buyer=buyer,
            idempotency_key=cls.idempotency_key_for(order_id),
        )

    @classmethod
    def open_unless_billed(cls, payments: list["Payment"], status: str = PaymentStatus.CHARGING) -> set[str]:
        """Insert these just-opened payments as `status`, skipping orders that have one; the order ids inserted.

        One statement for any number of payments: ON CONFLICT on the order, so a redelivery (or a
        concurrent copy, which waits for the first to commit) finds the order's payment instead.
        """
        if not payments:
            return set()
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                _OPEN_SQL,
                [
                    status,
                    now,
                    now,
                    [p.id for p in payments],
                    [p.order_id for p in payments],
                    [p.amount for p in payments],
                    [p.currency for p in payments],
                    [p.buyer for p in payments],
                    [p.idempotency_key for p in payments],
                ],
            )
            inserted = {str(order_id) for (order_id,) in cursor.fetchall()}
        for payment in payments:
            if str(payment.order_id) in inserted:
                payment.status = status
                payment.created_at = payment.updated_at = now
                payment._state.adding = False  # saved: the next save() is an UPDATE
                payment._state.db = connection.alias
        return inserted

    @classmethod
    def lock_in_status(cls, pks: list[uuid.UUID], status: str) -> dict[uuid.UUID, bool]:
        """Lock these payments to the end of the transaction; of those still in `status`, whether
        a cancellation was requested meanwhile (it may have been, since they were read)."""
        if not pks:
            return {}
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_IN_STATUS_SQL, [status, pks])
            return dict(cursor.fetchall())

    # Each outcome carries fraud's decision (score, rules hit): orders learns it from the outcome.

    def capture(self, *, gateway_reference: str, fraud_score: int, fraud_reasons: list[str]) -> None:
        self._require_charging()
        self.status = PaymentStatus.CAPTURED
        self.gateway_reference = gateway_reference
        self.stage_event(
            PaymentCaptured(
                order_id=str(self.order_id),
                payment_id=str(self.id),
                amount=str(self.amount),
                currency=self.currency,
                gateway_reference=gateway_reference,
                fraud_score=fraud_score,
                fraud_reasons=fraud_reasons,
            )
        )

    def decline(self, *, reason: str, fraud_score: int, fraud_reasons: list[str]) -> None:
        self._require_charging()
        self.status = PaymentStatus.DECLINED
        self.outcome_reason = reason
        self.stage_event(
            PaymentDeclined(
                order_id=str(self.order_id),
                payment_id=str(self.id),
                reason=reason,
                fraud_score=fraud_score,
                fraud_reasons=fraud_reasons,
            )
        )

    def block(self, *, fraud_score: int, fraud_reasons: list[str]) -> None:
        self._require_charging()
        self.status = PaymentStatus.BLOCKED
        self.outcome_reason = ", ".join(fraud_reasons)
        self.stage_event(
            PaymentBlocked(
                order_id=str(self.order_id),
                payment_id=str(self.id),
                fraud_score=fraud_score,
                fraud_reasons=fraud_reasons,
            )
        )

    # --- Cancellation ---

    def void(self) -> None:
        """Nothing was charged and nothing will be: a tombstone just opened for an order canceled before
        billing saw it, or a payment whose key billing voided at the gateway before any charge."""
        if self.status not in (PaymentStatus.VOIDED, PaymentStatus.CHARGING):
            raise ValueError(f"payment {self.id} is {self.status}: it cannot be voided")
        self.status = PaymentStatus.VOIDED
        self.outcome_reason = "order canceled before payment"
        self.stage_event(PaymentVoided(order_id=str(self.order_id), payment_id=str(self.id)))

    def request_refund(self) -> None:
        """The order was canceled after its capture: refund it (the refund runs outside any transaction)."""
        self._require(PaymentStatus.CAPTURED)
        self.status = PaymentStatus.REFUNDING
        self.cancel_requested = True

    def refunded(self, *, refund_reference: str) -> None:
        self._require(PaymentStatus.REFUNDING)
        self.status = PaymentStatus.REFUNDED
        self.refund_reference = refund_reference
        self.outcome_reason = "order canceled, refunded in full"
        self.stage_event(
            PaymentRefunded(
                order_id=str(self.order_id),
                payment_id=str(self.id),
                amount=str(self.amount),
                currency=self.currency,
                gateway_reference=self.gateway_reference,
                refund_reference=refund_reference,
            )
        )

    def _require_charging(self) -> None:
        self._require(PaymentStatus.CHARGING)

    def _require(self, status: str) -> None:
        if self.status != status:
            raise ValueError(f"payment {self.id} is {self.status}, not {status}")


_OPEN_SQL = f"""
    INSERT INTO {Payment._meta.db_table}
           (id, order_id, amount, currency, buyer, status, idempotency_key, gateway_reference, outcome_reason,
            cancel_requested, refund_reference, created_at, updated_at)
    SELECT p.id, p.order_id, p.amount, p.currency, p.buyer, %s, p.idempotency_key, '', '', false, '', %s, %s
      FROM unnest(%s::uuid[], %s::uuid[], %s::numeric[], %s::varchar[], %s::varchar[], %s::varchar[])
           AS p(id, order_id, amount, currency, buyer, idempotency_key)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id
"""


_LOCK_IN_STATUS_SQL = f"""
    SELECT id, cancel_requested FROM {Payment._meta.db_table}
     WHERE status = %s AND id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE
"""


class SimulatedGatewayEntry(models.Model):
    """What the simulated gateway records of each request it took, as a real provider would on its side."""

    idempotency_key = models.CharField(max_length=100, unique=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    succeeded = models.BooleanField()
    reference = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]


class SimulatedCharge(SimulatedGatewayEntry):
    """The simulated gateway's ledger of charges: at most one per idempotency key."""

    decline_reason = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.reference} {self.amount} {self.currency} {'ok' if self.succeeded else 'declined'}"


class SimulatedRefund(SimulatedGatewayEntry):
    """The simulated gateway's ledger of refunds: each of one charge, at most one per idempotency key.

    A refund succeeds only for a successful charge, of its whole amount and currency, and a charge
    is refunded successfully at most once (whatever the key): what a provider guarantees and what
    the saga's ledger checks.
    """

    charge = models.ForeignKey(SimulatedCharge, on_delete=models.PROTECT, related_name="refunds")
    failure_reason = models.CharField(max_length=200, blank=True)

    class Meta(SimulatedGatewayEntry.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["charge"], condition=models.Q(succeeded=True), name="simulated_refund_once_per_charge"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reference} {self.amount} {self.currency} {'ok' if self.succeeded else 'refused'}"


class GatewayOperation(models.TextChoices):
    CHARGE = "charge", "Charges"
    REFUND = "refund", "Refunds"


class SimulatedGatewayOutage(models.Model):
    """While now < until, the simulated gateway answers every request of `operation` with a transient error."""

    until = models.DateTimeField()
    operation = models.CharField(max_length=10, choices=GatewayOperation.choices, default=GatewayOperation.CHARGE)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-until"]

    def __str__(self) -> str:
        return f"{self.operation} outage until {self.until:%Y-%m-%d %H:%M:%S}"
