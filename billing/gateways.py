"""Payment gateways: the interface billing charges through, and the simulated default.

A gateway must honour the idempotency key: charging the same key again returns the first
result and never charges twice. That is what makes a crash between "charged" and "recorded"
safe: the retry charges with the same key.
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


@dataclass(frozen=True)
class ChargeResult:
    succeeded: bool
    reference: str
    decline_reason: str = ""


class PaymentGateway(Protocol):
    def charge(self, *, idempotency_key: str, amount: Decimal, currency: str, buyer: str) -> ChargeResult:
        """Charge once per idempotency key; raise a TransientError when the outcome is unknown."""
        ...


@cache
def _gateway_class(path: str) -> type:
    return import_string(path)


def get_gateway() -> PaymentGateway:
    """The gateway named by settings.PAYMENT_GATEWAY."""
    return _gateway_class(settings.PAYMENT_GATEWAY)()


class SimulatedGateway:
    """A stand-in payment provider with its own ledger (SimulatedCharge).

    Behaviour, from settings: SIMULATED_GATEWAY_LATENCY_MS per charge; charges above
    SIMULATED_GATEWAY_DECLINE_ABOVE are declined; while a SimulatedGatewayOutage is active
    (`manage.py gateway_outage`), every charge raises GatewayUnavailable.
    """

    def charge(self, *, idempotency_key: str, amount: Decimal, currency: str, buyer: str) -> ChargeResult:
        from billing.models import SimulatedCharge, SimulatedGatewayOutage

        if connection.in_atomic_block:
            # A real provider is another system: its ledger commits on its own, never inside
            # (and never rolled back with) billing's transaction.
            raise RuntimeError("the payment gateway must not be called inside a database transaction")
        latency_ms = settings.SIMULATED_GATEWAY_LATENCY_MS
        if latency_ms:
            time.sleep(latency_ms / 1000)
        declined = amount > settings.SIMULATED_GATEWAY_DECLINE_ABOVE
        with connection.cursor() as cursor:
            # One statement, committed on its own (autocommit): charges the key unless the gateway
            # is down or the key was charged before (then nothing is inserted).
            cursor.execute(
                _charge_sql(),
                [
                    idempotency_key,
                    amount,
                    currency,
                    not declined,
                    f"sim_{uuid.uuid4().hex[:20]}",
                    "insufficient funds" if declined else "",
                ],
            )
            charged = cursor.fetchone()
        if charged is not None:
            return ChargeResult(*charged)
        if SimulatedGatewayOutage.objects.filter(until__gt=timezone.now()).exists():
            raise GatewayUnavailable("simulated gateway outage")
        existing = SimulatedCharge.objects.get(idempotency_key=idempotency_key)  # charged before: same result
        return ChargeResult(existing.succeeded, existing.reference, existing.decline_reason)


@cache
def _charge_sql() -> str:
    from billing.models import SimulatedCharge, SimulatedGatewayOutage

    return f"""
        INSERT INTO {SimulatedCharge._meta.db_table}
               (idempotency_key, amount, currency, succeeded, reference, decline_reason, created_at)
        SELECT %s, %s::numeric, %s, %s, %s, %s, now()
         WHERE NOT EXISTS (SELECT 1 FROM {SimulatedGatewayOutage._meta.db_table} WHERE until > now())
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING succeeded, reference, decline_reason
    """
