"""Payment gateways: the interface billing charges and refunds through, and the simulated default.

A gateway must honour the idempotency key: charging (or refunding) the same key again returns the
first result and never moves money twice. That is what makes a crash between "charged" and
"recorded" safe: the retry charges with the same key.
"""

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Protocol

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.module_loading import import_string

from ordering.messaging.errors import TransientError


class GatewayUnavailable(TransientError):
    """The gateway cannot be reached or said it is down; the charge may be retried."""


class GatewayTimeout(TransientError):
    """The gateway did not answer in time; the charge may or may not have happened: retry it."""


# The decline reason of a key voided before anything was charged under it (PaymentGateway.void).
VOIDED_REASON = "voided before the charge"


@dataclass(frozen=True)
class ChargeResult:
    succeeded: bool
    reference: str
    decline_reason: str = ""

    @property
    def voided(self) -> bool:
        """Nothing was charged under the key, and nothing will be: it was voided first."""
        return not self.succeeded and self.decline_reason == VOIDED_REASON


@dataclass(frozen=True)
class RefundResult:
    succeeded: bool
    reference: str
    failure_reason: str = ""


class PaymentGateway(Protocol):
    def charge(self, *, idempotency_key: str, amount: Decimal, currency: str, buyer: str) -> ChargeResult:
        """Charge once per idempotency key; raise a TransientError when the outcome is unknown."""
        ...

    def void(self, *, idempotency_key: str, amount: Decimal, currency: str) -> ChargeResult:
        """Close the key for good: if nothing was charged under it, nothing ever will be.

        The first request under a key wins, as for charge(): a void before any charge returns a
        voided result (`.voided`), and so does every later charge or void of the key; a key
        charged before returns that charge's result (which then needs a refund). Raise a
        TransientError when the outcome is unknown.
        """
        ...

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal, currency: str) -> RefundResult:
        """Refund the charge `charge_reference` in full, once per idempotency key.

        A refund the gateway refuses (no such charge, a declined charge, another amount, already
        refunded) is a result, not an error; raise a TransientError when the outcome is unknown.
        """
        ...


@cache
def _gateway_class(path: str) -> type:
    return import_string(path)


def get_gateway() -> PaymentGateway:
    """The gateway named by settings.PAYMENT_GATEWAY."""
    return _gateway_class(settings.PAYMENT_GATEWAY)()


class SimulatedGateway:
    """A stand-in payment provider with its own ledger (SimulatedCharge).

    Behaviour, from settings: SIMULATED_GATEWAY_LATENCY_MS per request; charges above
    SIMULATED_GATEWAY_DECLINE_ABOVE are declined; while a SimulatedGatewayOutage of charges or of
    refunds is active (`manage.py gateway_outage [--refunds]`), every such request raises
    GatewayUnavailable (a void is a charge request). Refunds are recorded in SimulatedRefund.
    """

    def charge(self, *, idempotency_key: str, amount: Decimal, currency: str, buyer: str) -> ChargeResult:
        declined = amount > settings.SIMULATED_GATEWAY_DECLINE_ABOVE
        return self._first_under_key(idempotency_key, amount, currency, "insufficient funds" if declined else "")

    def void(self, *, idempotency_key: str, amount: Decimal, currency: str) -> ChargeResult:
        # A void is recorded as a declined charge of the key: whatever comes first under it wins.
        return self._first_under_key(idempotency_key, amount, currency, VOIDED_REASON)

    def _first_under_key(
        self, idempotency_key: str, amount: Decimal, currency: str, decline_reason: str
    ) -> ChargeResult:
        from billing.models import GatewayOperation, SimulatedCharge

        _as_another_system()
        with connection.cursor() as cursor:
            # One statement, committed on its own (autocommit): charges the key unless the gateway
            # is down or the key was charged before (then nothing is inserted).
            cursor.execute(
                _charge_sql(),
                [
                    idempotency_key,
                    amount,
                    currency,
                    not decline_reason,
                    f"sim_{uuid.uuid4().hex[:20]}",
                    decline_reason,
                ],
            )
            charged = cursor.fetchone()
        if charged is not None:
            return ChargeResult(*charged)
        _raise_if_down(GatewayOperation.CHARGE)
        existing = SimulatedCharge.objects.get(idempotency_key=idempotency_key)  # charged before: same result
        return ChargeResult(existing.succeeded, existing.reference, existing.decline_reason)

    def refund(self, *, idempotency_key: str, charge_reference: str, amount: Decimal, currency: str) -> RefundResult:
        from billing.models import GatewayOperation, SimulatedCharge, SimulatedRefund

        _as_another_system()
        with connection.cursor() as cursor:
            # One statement, committed on its own: refunds the charge unless the gateway is down,
            # the key was used before or the charge was refunded already (then nothing is inserted).
            cursor.execute(
                _refund_sql(),
                [idempotency_key, amount, currency, f"sim_re_{uuid.uuid4().hex[:17]}", charge_reference],
            )
            refunded = cursor.fetchone()
        if refunded is not None:
            return RefundResult(*refunded)
        _raise_if_down(GatewayOperation.REFUND)
        existing = SimulatedRefund.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:  # refunded before under this key: same result
            return RefundResult(existing.succeeded, existing.reference, existing.failure_reason)
        if not SimulatedCharge.objects.filter(reference=charge_reference).exists():
            return RefundResult(False, "", "no such charge")
        return RefundResult(False, "", "the charge was refunded already")


def _as_another_system() -> None:
    if connection.in_atomic_block:
        # A real provider is another system: its ledger commits on its own, never inside
        # (and never rolled back with) billing's transaction.
        raise RuntimeError("the payment gateway must not be called inside a database transaction")
    latency_ms = settings.SIMULATED_GATEWAY_LATENCY_MS
    if latency_ms:
        time.sleep(latency_ms / 1000)


def _raise_if_down(operation: str) -> None:
    from billing.models import SimulatedGatewayOutage

    if SimulatedGatewayOutage.objects.filter(operation=operation, until__gt=timezone.now()).exists():
        raise GatewayUnavailable(f"simulated gateway outage ({operation}s)")


@cache
def _charge_sql() -> str:
    from billing.models import SimulatedCharge, SimulatedGatewayOutage

    return f"""
        INSERT INTO {SimulatedCharge._meta.db_table}
               (idempotency_key, amount, currency, succeeded, reference, decline_reason, created_at)
        SELECT %s, %s::numeric, %s, %s, %s, %s, now()
         WHERE NOT EXISTS (
               SELECT 1 FROM {SimulatedGatewayOutage._meta.db_table} WHERE operation = 'charge' AND until > now()
         )
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING succeeded, reference, decline_reason
    """


@cache
def _refund_sql() -> str:
    from billing.models import SimulatedCharge, SimulatedGatewayOutage, SimulatedRefund

    # Parameters: key, amount, currency, reference, the charge's reference. Refused (recorded,
    # succeeded false): a declined charge, another amount or currency. Not inserted at all: an
    # unknown charge, a key used before, a charge refunded already (the partial unique index).
    return f"""
        INSERT INTO {SimulatedRefund._meta.db_table}
               (idempotency_key, charge_id, amount, currency, succeeded, reference, failure_reason, created_at)
        SELECT r.key, c.id, r.amount, r.currency,
               c.succeeded AND c.amount = r.amount AND c.currency = r.currency,
               r.reference,
               CASE WHEN NOT c.succeeded THEN 'the charge was declined'
                    WHEN c.amount <> r.amount OR c.currency <> r.currency
                    THEN 'a refund must be of the whole charge, in its currency'
                    ELSE '' END,
               now()
          FROM (SELECT %s AS key, %s::numeric AS amount, %s::varchar AS currency, %s AS reference) AS r
          JOIN {SimulatedCharge._meta.db_table} AS c ON c.reference = %s
         WHERE NOT EXISTS (
               SELECT 1 FROM {SimulatedGatewayOutage._meta.db_table} WHERE operation = 'refund' AND until > now()
         )
        ON CONFLICT DO NOTHING
        RETURNING succeeded, reference, failure_reason
    """
