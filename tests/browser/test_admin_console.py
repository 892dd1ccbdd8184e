"""The browser test: an operator fixes a dead-lettered order in the admin, in headless Chromium.

The whole system runs as real processes; a gateway outage longer than the (short) retry budget
dead-letters an order, the operator logs in, finds it with the "dead-lettered" filter, replays it
from its page and sees it PROCESSED. Screenshots go to test-artifacts/ (ignored by git);
UPDATE_DOCS_SCREENSHOT=1 also writes the dead-letters page to docs/admin-dead-letters.png.
"""

import os
import uuid
from pathlib import Path

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By

from billing.models import SimulatedGatewayOutage
from ordering import catalogue
from ordering.celery import app
from ordering.messaging import selectors
from orders.models import Order
from tests.browser.conftest import OPERATOR_PASSWORD
from tests.conftest import make_order
from tests.integration.conftest import queue_depth, wait_for_status
from tests.processes import ROOT, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DOCS_SCREENSHOT = ROOT / "docs" / "admin-dead-letters.png"


def screenshot(browser, path: Path) -> None:
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_an_operator_replays_a_dead_lettered_order_from_the_admin(running_system, browser, operator, user, artifacts):
    base = running_system
    # Two orders dead-lettered by a gateway outage, and a message no consumer can read: two groups.
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timezone.timedelta(minutes=5))
    order, other = make_order(user), make_order(user)
    app.send_task(
        catalogue.BILLING_HANDLE_ORDER_CREATED, kwargs={"envelope": {"not": "an envelope"}},
        task_id=str(uuid.uuid4()), queue=catalogue.BILLING_QUEUE,
    )  # fmt: skip
    dlq = catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)
    wait_until(lambda: queue_depth(dlq) == 3, timeout=60, message="two orders and the poison message in the DLQ")
    wait_until(
        lambda: all(selectors.dead_letters_for_order(str(o.id)) for o in (order, other)),
        timeout=10,
        message="the orders' failures recorded",
    )
    SimulatedGatewayOutage.objects.update(until=timezone.now())

    browser.get(f"{base}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(operator.username)
    browser.find_element(By.NAME, "password").send_keys(OPERATOR_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: "/admin/login/" not in browser.current_url, timeout=10, message="the login")

    # The dead letters, grouped by cause (the navigation sidebar closed, a 1280x800 page).
    browser.execute_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    )
    browser.get(f"{base}/admin/messaging/deadletter/")
    groups = browser.find_element(By.ID, "dead-letter-groups").text
    assert "GatewayUnavailable" in groups and "MalformedEnvelope" in groups
    screenshot(browser, artifacts / "admin-dead-letters.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        screenshot(browser, DOCS_SCREENSHOT)

    # The orders that need an operator: the dead-lettered filter finds the order.
    browser.get(f"{base}/admin/orders/order/")
    browser.find_element(By.LINK_TEXT, "Dead-lettered (unresolved dead letter)").click()
    wait_until(lambda: "problem=dead_lettered" in browser.current_url, timeout=10, message="the filter")
    browser.find_element(By.LINK_TEXT, str(order.id)).click()

    # Its page: replay its dead letters (a POST with the CSRF token), then it is PROCESSED.
    browser.find_element(By.ID, "replay-dead-letters").click()
    wait_until(
        lambda: "Replayed 1 dead letter." in browser.find_element(By.TAG_NAME, "body").text,
        timeout=15,
        message="the replay's message",
    )
    wait_for_status(order.id, "PROCESSED", timeout=30)
    browser.refresh()
    status = browser.find_element(By.CSS_SELECTOR, ".field-status .readonly").text
    assert status == "Processed"
    assert "dead letter replayed (replay by operator)" in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, artifacts / "admin-order-replayed.png")
    # Only that order: the other one still waits for an operator.
    assert Order.objects.get(pk=other.pk).status == "PENDING"
