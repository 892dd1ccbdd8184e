"""The chaos ledger's money and cancellation checks, against hand-made rows of a test database.

A check that never fires is worse than none: the chaos run reports "0 violations" either way.
Each test builds the rows a broken system would leave (a refund of a declined charge, a charge
after a void, a 202 whose order ended PROCESSED...) and asserts that exactly its check fires,
next to rows of a correct system that must pass. No processes, no broker.
"""

import uuid
from collections import Counter
from decimal import Decimal

import factory
import pytest
from django.contrib.auth import get_user_model

from billing.models import SimulatedCharge, SimulatedRefund
from orders.models import Order
from tests.chaos.cancels import CancelRequest
from tests.chaos.ledger import (
    GatewayMoney,
    cancellation_violations,
    charged_but_not_kept,
    gateway_money,
    money_violations,
    order_rows,
    pipeline_state,
    wrong_outcomes,
)

pytestmark = pytest.mark.django_db

PAID, DECLINED, BLOCKED = Decimal("10.00"), Decimal("6000.00"), Decimal("12000.00")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"chaos-ledger-{n}")


class OrderFactory(factory.django.DjangoModelFactory):
    """An order row in any status: the rows a run leaves, not the transitions that lead there."""

    class Meta:
        model = Order

    owner = factory.SubFactory(UserFactory)
    product_name = "chaos item"
    quantity = 1
    price = PAID
    currency = "EUR"
    buyer = factory.Sequence(lambda n: f"chaos-ledger-{n}@example.com")
    status = "PROCESSED"


class ChargeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SimulatedCharge

    class Params:
        order = None

    idempotency_key = factory.LazyAttribute(lambda o: f"order-{o.order.id}")
    amount = factory.LazyAttribute(lambda o: o.order.amount)
    currency = "EUR"
    succeeded = True
    reference = factory.Sequence(lambda n: f"ch_{n}")


class RefundFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SimulatedRefund

    idempotency_key = factory.LazyAttribute(lambda o: f"refund-{o.charge.idempotency_key}")
    amount = factory.LazyAttribute(lambda o: o.charge.amount)
    currency = "EUR"
    succeeded = True
    reference = factory.Sequence(lambda n: f"re_{n}")


def refunded_order(**fields) -> tuple[Order, SimulatedRefund]:
    """A cancelled PROCESSED order as it must end: charged, refunded in full, REFUNDED with the refund's reference."""
    order = OrderFactory(status="REFUNDED", **fields)
    refund = RefundFactory(charge=ChargeFactory(order=order))
    order.refund_reference = refund.reference
    order.save(update_fields=["refund_reference"])
    return order, refund


def cancel(order: Order, status: int | None = 202, *, body: str = "CANCELING", code: str = "") -> CancelRequest:
    return CancelRequest(
        index=0,
        order_id=str(order.id),
        moment="late",
        delay=0.0,
        due_at=0.0,
        idempotency_key=f"cancel-{order.id}",
        status=status,
        code=code or ("order_not_cancelable" if status == 409 else ""),
        order_status=body if status == 202 else "",
    )


def money_flags() -> dict[str, list[str]]:
    return {name: ids for name, ids in money_violations(orders=order_rows(), money=gateway_money()).items() if ids}


def cancel_flags(cancels: list[CancelRequest]) -> dict[str, list[str]]:
    return {name: ids for name, ids in cancellation_violations(cancels=cancels, orders=order_rows()).items() if ids}


def test_the_money_of_paid_refunded_voided_and_declined_orders_balances():
    paid = OrderFactory(status="PROCESSED")
    ChargeFactory(order=paid)
    refunded, refund = refunded_order(price=Decimal("123.45"))
    OrderFactory(status="CANCELED")  # voided: never charged
    declined = OrderFactory(status="PAYMENT_DECLINED", price=DECLINED)
    ChargeFactory(order=declined, succeeded=False)

    money = gateway_money()

    assert money_flags() == {}
    assert charged_but_not_kept(orders=order_rows(), money=money) == []
    assert (money.charges, money.refunds, money.refunded_total) == (3, 1, Decimal("123.45"))
    assert money.refund_references[str(refunded.id)] == {refund.reference}


def test_a_refund_of_a_declined_charge_or_of_another_amount_has_no_capture():
    declined = OrderFactory(status="REFUNDED", price=DECLINED)
    RefundFactory(charge=ChargeFactory(order=declined, succeeded=False))
    partial = OrderFactory(status="REFUNDED")
    RefundFactory(charge=ChargeFactory(order=partial), amount=Decimal("4.00"))

    flagged = money_flags()["refunds without a successful charge of the same amount"]

    assert flagged == sorted([str(declined.id), str(partial.id)])


def test_a_refund_under_another_orders_key_has_no_capture():
    order, refund = refunded_order()
    refund.idempotency_key = f"refund-order-{uuid.uuid4()}"
    refund.save()

    assert money_flags()["refunds without a successful charge of the same amount"] == [str(order.id)]


def test_an_order_refunded_twice_is_flagged():
    # The gateway's constraint (one successful refund per charge) keeps such rows out of the
    # database, so the ledger is built by hand: the check must not rely on that constraint.
    order_id = str(uuid.uuid4())
    money = GatewayMoney(successful_refunds=Counter({order_id: 2}))

    assert money_violations(orders={}, money=money)["orders refunded more than once"] == [order_id]


def test_a_charge_of_a_canceled_order_is_flagged():
    canceled = OrderFactory(status="CANCELED")
    ChargeFactory(order=canceled)

    flags = money_flags()

    assert flags["charged though CANCELED (nothing may be charged)"] == [str(canceled.id)]
    assert flags["charges - refunds != amount if PROCESSED, else 0"] == [str(canceled.id)]
    assert charged_but_not_kept(orders=order_rows(), money=gateway_money()) == [str(canceled.id)]


def test_the_balance_is_the_amount_for_processed_orders_and_zero_for_the_others():
    refunded_but_processed = OrderFactory(status="PROCESSED")
    RefundFactory(charge=ChargeFactory(order=refunded_but_processed))
    charged_twice_the_amount = OrderFactory(status="PROCESSED", quantity=2)
    ChargeFactory(order=charged_twice_the_amount, amount=PAID)  # half of price * quantity
    charge_without_order = ChargeFactory(order=OrderFactory.build())  # the order row is missing

    flags = money_flags()

    assert flags["charges - refunds != amount if PROCESSED, else 0"] == sorted(
        [
            str(refunded_but_processed.id),
            str(charged_twice_the_amount.id),
            charge_without_order.idempotency_key.removeprefix("order-"),
        ]
    )


def test_a_refunded_order_carries_its_own_refunds_reference():
    empty, _ = refunded_order()
    empty.refund_reference = ""
    empty.save(update_fields=["refund_reference"])
    wrong, _ = refunded_order()
    wrong.refund_reference = "re_of_someone_else"
    wrong.save(update_fields=["refund_reference"])
    refunded_order()

    assert money_flags() == {"REFUNDED without its refund's reference": sorted([str(empty.id), str(wrong.id)])}


def test_answers_that_kept_the_contract_pass():
    voided = OrderFactory(status="CANCELED")
    refunded, _ = refunded_order()
    declined_first = OrderFactory(status="PAYMENT_DECLINED", price=DECLINED)
    blocked_before = OrderFactory(status="CANCELED_FRAUD", price=BLOCKED)
    unanswered = OrderFactory(status="PROCESSED")  # no answer: the cancellation may never have happened

    flags = cancel_flags(
        [
            cancel(voided),
            cancel(refunded),
            cancel(declined_first),
            cancel(blocked_before, 409),
            cancel(unanswered, None),
        ]
    )

    assert flags == {}


def test_a_cancellation_acknowledged_must_end_terminal_and_not_processed():
    stuck = OrderFactory(status="CANCELING")
    still_pending = OrderFactory(status="PENDING")
    processed = OrderFactory(status="PROCESSED")

    flags = cancel_flags([cancel(stuck), cancel(still_pending), cancel(processed)])

    assert flags["stuck cancellations (202, not terminal)"] == sorted([str(stuck.id), str(still_pending.id)])
    assert flags["cancellations (202) that ended PROCESSED"] == [str(processed.id)]


def test_a_409_is_only_for_an_order_that_was_over():
    processed = OrderFactory(status="PROCESSED")
    refunded, _ = refunded_order()

    flags = cancel_flags([cancel(processed, 409), cancel(refunded, 409)])

    assert flags == {"409 for an order that was not over": [str(processed.id)]}


def test_answers_outside_the_contract_are_flagged():
    unknown = OrderFactory(status="CANCELED")
    in_flight = OrderFactory(status="CANCELED")
    bad_request = OrderFactory(status="CANCELED")
    body_pending = OrderFactory(status="CANCELED")

    flags = cancel_flags(
        [
            cancel(unknown, 404),
            cancel(in_flight, 409, code="idempotency_key_in_flight"),
            cancel(bad_request, 400),
            cancel(body_pending, body="PENDING"),
        ]
    )

    assert flags["404 for an accepted order"] == [str(unknown.id)]
    assert flags["cancel answers outside the contract"] == sorted([str(in_flight.id), str(bad_request.id)])
    assert flags["202 whose body is not CANCELING or over"] == [str(body_pending.id)]


def test_a_cancelled_order_may_not_end_in_a_status_its_amount_rules_out():
    blocked_amount_refunded, _ = refunded_order(price=BLOCKED)  # fraud blocks it: never charged
    paid_amount_declined = OrderFactory(status="PAYMENT_DECLINED")
    declined_amount_processed = OrderFactory(status="PROCESSED", price=DECLINED)

    flags = cancel_flags(
        [cancel(blocked_amount_refunded), cancel(paid_amount_declined), cancel(declined_amount_processed, None)]
    )

    assert flags["cancelled orders in a status their amount rules out"] == sorted(
        [str(blocked_amount_refunded.id), str(paid_amount_declined.id), str(declined_amount_processed.id)]
    )


def test_the_expected_status_check_leaves_cancelled_orders_to_the_cancellation_checks():
    cancelled = OrderFactory(status="CANCELED", price=DECLINED)
    not_cancelled = OrderFactory(status="CANCELED", price=DECLINED)

    assert wrong_outcomes(orders=order_rows(), cancelled={str(cancelled.id)}) == [str(not_cancelled.id)]


def test_the_drain_waits_for_canceling_orders_and_refunding_payments():
    OrderFactory(status="CANCELING")
    OrderFactory(status="REFUNDED")

    state = pipeline_state()

    assert state["canceling_orders"] == 1
    assert state["refunding_payments"] == 0
    assert any(state.values())
