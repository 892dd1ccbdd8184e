"""The simulated payment gateway: charges and refunds once per idempotency key, each with its own outage switch."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from billing.gateways import GatewayUnavailable, SimulatedGateway
from billing.models import GatewayOperation, SimulatedCharge, SimulatedGatewayOutage, SimulatedRefund
from tests.commands import command_output

# The gateway commits on its own, outside any transaction: these tests see its rows as another
# system's, after the fact.
pytestmark = pytest.mark.django_db(transaction=True)

gateway = SimulatedGateway()


def charge(key: str = "order-1", amount: str = "30.00", currency: str = "EUR") -> str:
    result = gateway.charge(idempotency_key=key, amount=Decimal(amount), currency=currency, buyer="b@example.com")
    return result.reference


def refund(charge_reference: str, key: str = "refund-order-1", amount: str = "30.00", currency: str = "EUR"):
    return gateway.refund(
        idempotency_key=key, charge_reference=charge_reference, amount=Decimal(amount), currency=currency
    )


def outage(operation: str) -> None:
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timedelta(minutes=5), operation=operation)


def test_a_refund_returns_the_whole_charge_once_per_key():
    reference = charge()
    first = refund(reference)
    assert first.succeeded and first.reference.startswith("sim_re_") and first.failure_reason == ""
    assert refund(reference) == first  # the same key again: the first result, no second refund
    [recorded] = SimulatedRefund.objects.all()
    assert (recorded.charge.reference, recorded.amount, recorded.currency) == (reference, Decimal("30.00"), "EUR")


def test_a_charge_is_refunded_at_most_once_whatever_the_key():
    reference = charge()
    assert refund(reference, key="refund-a").succeeded
    again = refund(reference, key="refund-b")
    assert (again.succeeded, again.failure_reason) == (False, "the charge was refunded already")
    assert SimulatedRefund.objects.filter(succeeded=True).count() == 1


def test_two_refunds_of_one_charge_at_once_refund_it_once():
    reference = charge()
    results = []
    barrier = threading.Barrier(2)

    def refund_concurrently(key: str) -> None:
        barrier.wait()
        try:
            results.append(refund(reference, key=key))
        finally:
            connection.close()

    threads = [threading.Thread(target=refund_concurrently, args=(key,)) for key in ("refund-a", "refund-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result.succeeded for result in results) == [False, True]
    assert SimulatedRefund.objects.filter(succeeded=True).count() == 1


@pytest.mark.parametrize(
    ("amount", "currency"), [("29.99", "EUR"), ("30.01", "EUR"), ("30.00", "USD")], ids=["less", "more", "currency"]
)
def test_a_refund_of_another_amount_or_currency_is_refused_and_recorded(amount, currency):
    reference = charge()
    result = refund(reference, amount=amount, currency=currency)
    assert (result.succeeded, result.failure_reason) == (False, "a refund must be of the whole charge, in its currency")
    assert SimulatedRefund.objects.get().succeeded is False
    assert refund(reference, key="refund-right").succeeded  # a refused refund does not use the charge up


def test_a_declined_charge_cannot_be_refunded(settings):
    settings.SIMULATED_GATEWAY_DECLINE_ABOVE = Decimal("10.00")
    result = refund(charge())
    assert (result.succeeded, result.failure_reason) == (False, "the charge was declined")


def test_an_unknown_charge_cannot_be_refunded_and_leaves_no_record():
    result = refund("sim_no_such_charge")
    assert (result.succeeded, result.failure_reason) == (False, "no such charge")
    assert not SimulatedRefund.objects.exists()


def test_a_refund_outage_fails_refunds_with_a_transient_error_and_not_charges():
    reference = charge()
    outage(GatewayOperation.REFUND)
    with pytest.raises(GatewayUnavailable, match="refunds"):
        refund(reference)
    assert not SimulatedRefund.objects.exists()
    charge(key="order-2")  # charges go on
    SimulatedGatewayOutage.objects.update(until=timezone.now())
    assert refund(reference).succeeded  # retried with the same key once it is over


def test_a_charge_outage_fails_charges_and_not_refunds():
    reference = charge()
    outage(GatewayOperation.CHARGE)
    with pytest.raises(GatewayUnavailable, match="charges"):
        charge(key="order-2")
    assert refund(reference).succeeded
    assert SimulatedCharge.objects.count() == 1


def test_a_repeated_refund_during_an_outage_is_unavailable_like_any_other():
    # As for charges: while down, the gateway answers nothing, not even what it did before.
    reference = charge()
    first = refund(reference)
    outage(GatewayOperation.REFUND)
    with pytest.raises(GatewayUnavailable):
        refund(reference)
    SimulatedGatewayOutage.objects.update(until=timezone.now())
    assert refund(reference) == first


def test_the_gateway_refuses_to_refund_inside_a_transaction():
    reference = charge()
    with transaction.atomic(), pytest.raises(RuntimeError, match="inside a database transaction"):
        refund(reference)


def test_the_outage_command_switches_refunds_and_charges_separately():
    def ongoing() -> list[str]:
        outages = SimulatedGatewayOutage.objects.filter(until__gt=timezone.now())
        return sorted(outages.values_list("operation", flat=True))

    assert "outage of refunds until" in command_output("gateway_outage", "--seconds", "60", "--refunds")
    assert "outage of charges until" in command_output("gateway_outage", "--seconds", "60")
    assert ongoing() == ["charge", "refund"]
    command_output("gateway_outage", "--off", "--refunds")
    assert ongoing() == ["charge"]
    call_command("gateway_outage", "--off")
    assert ongoing() == []


def void(key: str = "order-1") -> object:
    return gateway.void(idempotency_key=key, amount=Decimal("30.00"), currency="EUR")


def test_a_void_before_any_charge_closes_the_key_for_good():
    assert void().voided
    later = gateway.charge(idempotency_key="order-1", amount=Decimal("30.00"), currency="EUR", buyer="b@example.com")
    assert later.voided and not later.succeeded
    assert void().voided  # a repeat: the same answer
    assert not SimulatedCharge.objects.filter(succeeded=True).exists()


def test_a_void_after_a_charge_returns_the_charge():
    reference = charge()
    result = void()
    assert (result.succeeded, result.voided, result.reference) == (True, False, reference)


def test_a_void_is_a_charge_request_and_waits_out_a_charge_outage():
    outage(GatewayOperation.CHARGE)
    with pytest.raises(GatewayUnavailable):
        void()
    assert not SimulatedCharge.objects.exists()
