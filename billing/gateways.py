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
from django.db import IntegrityError, transaction
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

        latency_ms = settings.SIMULATED_GATEWAY_LATENCY_MS
        if latency_ms:
            time.sleep(latency_ms / 1000)
        if SimulatedGatewayOutage.objects.filter(until__gt=timezone.now()).exists():
            raise GatewayUnavailable("simulated gateway outage")
        existing = SimulatedCharge.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:
            declined = amount > settings.SIMULATED_GATEWAY_DECLINE_ABOVE
            try:
                # durable: the gateway's ledger commits on its own, never inside billing's
                # transaction (a real provider is another system).
                with transaction.atomic(durable=True):
                    existing = SimulatedCharge.objects.create(
                        idempotency_key=idempotency_key,
                        amount=amount,
                        currency=currency,
                        succeeded=not declined,
                        reference=f"sim_{uuid.uuid4().hex[:20]}",
                        decline_reason="insufficient funds" if declined else "",
                    )
            except IntegrityError:  # a concurrent charge with the same key won
                existing = SimulatedCharge.objects.get(idempotency_key=idempotency_key)
        return ChargeResult(existing.succeeded, existing.reference, existing.decline_reason)
