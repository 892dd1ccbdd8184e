"""Cancelling orders in the admin: the order page's button and the list's action, the permission, POST and CSRF,
the confirmation page, the audit (LogEntry), refusals, and what the order's timeline says about a cancellation."""

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client

from ordering import catalogue
from ordering.messaging.models import OutboxEvent
from orders.models import Order, OrderStatus
from orders.services import order_mark_payment_declined, order_mark_processed, order_request_cancel
from tests.admin.test_dead_letter_console import staff
from tests.conftest import make_order
from tests.saga.pipeline import Pipeline

pytestmark = pytest.mark.django_db

LIST = "/admin/orders/order/"


def page_of(order: Order) -> str:
    return f"{LIST}{order.pk}/change/"


def cancel_url(order: Order) -> str:
    return f"{LIST}{order.pk}/cancel/"


@pytest.fixture
def operator() -> Client:
    return staff("view_order", "cancel_order")


def user_of(client: Client):
    return get_user_model().objects.get(pk=client.session["_auth_user_id"])


def status_of(order: Order) -> str:
    return Order.objects.get(pk=order.pk).status


def cancel_events(order: Order) -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CANCEL_REQUESTED))


def texts(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def select(*orders: Order, **extra: str) -> dict:
    return {"action": "cancel_selected", "_selected_action": [str(order.pk) for order in orders], **extra}


# --- the order's page -----------------------------------------------------------------------------------


def test_the_button_is_offered_with_the_permission_for_an_order_that_can_still_be_canceled(operator, user):
    pending, declined = make_order(user), make_order(user)
    order_mark_payment_declined(order_id=str(declined.id), reason="no funds")
    page = operator.get(page_of(pending)).content.decode()
    assert f'action="{cancel_url(pending)}"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    assert "Cancel this order" not in operator.get(page_of(declined)).content.decode()


def test_without_the_permission_there_is_no_button_and_the_view_refuses(user):
    order = make_order(user)
    viewer = staff("view_order")
    assert "Cancel this order" not in viewer.get(page_of(order)).content.decode()
    assert viewer.post(cancel_url(order), {"confirm": "yes"}).status_code == 403
    # The permission alone does not open another model's records: it needs the order's view permission too.
    assert staff("cancel_order").post(cancel_url(order), {"confirm": "yes"}).status_code == 403
    assert status_of(order) == OrderStatus.PENDING
    assert cancel_events(order) == []
    assert not LogEntry.objects.exists()


def test_the_button_leads_to_a_confirmation_and_only_its_post_cancels_and_is_audited(operator, user):
    order = make_order(user)
    assert operator.get(cancel_url(order)).status_code == 405  # POST only: a link or a prefetch changes nothing

    confirmation = operator.post(cancel_url(order))
    assert confirmation.status_code == 200
    page = confirmation.content.decode()
    assert "Request the cancellation of this order?" in page
    assert "not charged yet: billing voids its payment" in page
    assert 'id="confirm-cancel"' in page
    assert status_of(order) == OrderStatus.PENDING  # nothing before the confirmation
    assert not LogEntry.objects.exists()

    response = operator.post(cancel_url(order), {"confirm": "yes"}, follow=True)
    assert response.redirect_chain == [(page_of(order), 302)]
    assert "Requested the cancellation of 1 order: billing voids" in response.content.decode()
    assert status_of(order) == OrderStatus.CANCELING
    [event] = cancel_events(order)
    assert event.payload["requested_by"] == f"admin:{user_of(operator).pk}"
    [entry] = LogEntry.objects.all()
    assert (entry.user, entry.action_flag, entry.object_id, entry.content_type.model) == (
        user_of(operator), CHANGE, str(order.pk), "order",
    )  # fmt: skip
    assert entry.get_change_message() == "Requested the cancellation of the order (was PENDING)."

    # Again (a second click, another operator meanwhile): nothing more is recorded.
    again = operator.post(cancel_url(order), {"confirm": "yes"})
    assert texts(again) == [f"Order {order.pk} is being canceled already."]
    assert len(cancel_events(order)) == 1
    assert LogEntry.objects.count() == 1


def test_a_post_without_the_csrf_token_is_refused(user):
    order = make_order(user)
    browser = Client(enforce_csrf_checks=True)
    operator = get_user_model().objects.create_superuser(username="root", password="pw")
    browser.force_login(operator)
    assert browser.post(cancel_url(order), {"confirm": "yes"}).status_code == 403
    assert status_of(order) == OrderStatus.PENDING
    assert cancel_events(order) == []


def test_an_order_that_is_over_is_refused_with_an_error_and_nothing_changes(operator, user):
    order = make_order(user)
    order_mark_payment_declined(order_id=str(order.id), reason="no funds")
    before = Order.objects.filter(pk=order.pk).values().get()
    confirmation = operator.post(cancel_url(order)).content.decode()
    assert "Payment declined: can no longer be canceled" in confirmation
    assert 'id="confirm-cancel"' not in confirmation
    response = operator.post(cancel_url(order), {"confirm": "yes"})  # posted anyway
    assert texts(response) == [f"Order {order.pk} is PAYMENT_DECLINED and can no longer be canceled: nothing changed."]
    assert Order.objects.filter(pk=order.pk).values().get() == before
    assert cancel_events(order) == []
    assert not LogEntry.objects.exists()


# --- the list's action -----------------------------------------------------------------------------------


def test_the_list_action_confirms_then_cancels_each_order_it_can_and_says_which_it_cannot(operator, user):
    pending, processed, declined, canceling = (make_order(user) for _ in range(4))
    order_mark_processed(order_id=str(processed.id), payment_reference="sim_1", amount=processed.amount, currency="EUR")
    order_mark_payment_declined(order_id=str(declined.id), reason="no funds")
    order_request_cancel(order_id=canceling.id, requested_by="api:1")
    chosen = (pending, processed, declined, canceling)

    confirmation = operator.post(LIST, select(*chosen))
    assert confirmation.status_code == 200
    page = confirmation.content.decode()
    assert "Request the cancellation of these 4 orders?" in page
    assert "charged (sim_1): billing refunds 10.00 EUR in full" in page
    assert "being canceled already" in page
    assert 'value="Yes, cancel 2 orders"' in page
    assert [status_of(order) for order in chosen] == [
        OrderStatus.PENDING, OrderStatus.PROCESSED, OrderStatus.PAYMENT_DECLINED, OrderStatus.CANCELING,
    ]  # fmt: skip

    response = operator.post(LIST, select(*chosen, confirm="yes"))
    assert response.status_code == 302
    assert [status_of(order) for order in chosen] == [
        OrderStatus.CANCELING, OrderStatus.CANCELING, OrderStatus.PAYMENT_DECLINED, OrderStatus.CANCELING,
    ]  # fmt: skip
    assert sorted(texts(response)) == sorted(
        [
            f"Order {declined.pk} is PAYMENT_DECLINED and can no longer be canceled: nothing changed.",
            f"Order {canceling.pk} is being canceled already.",
            "Requested the cancellation of 2 orders: billing voids a payment not yet charged and refunds a captured "
            "one.",
        ]
    )
    assert sorted(LogEntry.objects.values_list("object_id", "change_message")) == sorted(
        [
            (str(pending.pk), "Requested the cancellation of the order (was PENDING)."),
            (str(processed.pk), "Requested the cancellation of the order (was PROCESSED)."),
        ]
    )
    assert [event.payload["requested_by"] for order in chosen for event in cancel_events(order)] == [
        f"admin:{user_of(operator).pk}", f"admin:{user_of(operator).pk}", "api:1",
    ]  # fmt: skip


def test_the_list_action_is_not_offered_or_run_without_the_permission(user):
    order = make_order(user)
    viewer = staff("view_order")
    assert "cancel_selected" not in viewer.get(LIST).content.decode()
    viewer.post(LIST, select(order, confirm="yes"))
    assert status_of(order) == OrderStatus.PENDING
    assert not LogEntry.objects.exists()


# --- the timeline ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("charged", [False, True])
def test_the_timeline_names_who_asked_and_the_void_or_the_refund_with_its_reference(user, charged):
    order = make_order(user)
    pipeline = Pipeline(str(order.id))
    if charged:
        pipeline.consume_all()  # PROCESSED
    operator = staff("view_order", "cancel_order")
    operator.post(cancel_url(order), {"confirm": "yes"})
    if not charged:
        pipeline.consume("cancel_requested")  # before billing saw the order: voided
    pipeline.consume_all()  # billing refunds (or finds the void); orders hears of it
    order.refresh_from_db()
    page = operator.get(page_of(order)).content.decode()

    who = user_of(operator)
    assert (
        f"recorded orders.order.cancel_requested v1: cancellation requested by admin:{who.pk} ({who.username})" in page
    )
    if charged:
        assert order.status == OrderStatus.REFUNDED
        assert (
            f"recorded billing.payment.refunded v1: refunded 10.00 EUR in full: refund {order.refund_reference} "
            f"of charge {order.payment_reference}" in page
        )
        assert f"recorded billing.payment.captured v2: charged 10.00 EUR: charge {order.payment_reference}" in page
        assert "status REFUNDED" in page
    else:
        assert order.status == OrderStatus.CANCELED
        assert "recorded billing.payment.voided v1: payment voided, nothing was charged" in page
        assert "status CANCELED" in page
    # The order's own fields say it too.
    assert "Cancel requested at" in page and "Refund reference" in page
    if charged:
        assert f'<div class="readonly">{order.refund_reference}</div>' in page
    assert "Cancel this order" not in page  # over: no button
