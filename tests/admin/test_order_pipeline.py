"""The order's admin page says where a PENDING order is: on its way, or stuck and why (the watchdog's view)."""

import pytest

from tests.admin.test_dead_letter_console import staff
from tests.conftest import make_order
from tests.orders.test_watchdog import creation_event, stuck_order

pytestmark = pytest.mark.django_db


def where_it_is(order) -> str:
    response = staff("view_order").get(f"/admin/orders/order/{order.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_new_order_is_on_its_way(user):
    assert "on its way (PENDING for" in where_it_is(make_order(user))


def test_a_stuck_order_s_page_names_its_state_and_cause(user):
    waiting = stuck_order(user, published_ago=None)
    assert "stuck for 10 min, in flight: an event waits for the relay" in where_it_is(waiting)
    missing = stuck_order(user)
    creation_event(missing).delete()
    page = where_it_is(missing)
    assert "stuck for 10 min, missing:" in page
    assert "no order_created event" in page
