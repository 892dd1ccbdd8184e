"""The admin an operator uses: orders with their history, dead letters, the fraud blocklist."""

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from django_celery_results.models import TaskResult
from rest_framework.authtoken.models import Token

from fraud.models import BlockedBuyer
from ordering import catalogue
from tests.conftest import make_order

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(get_user_model().objects.create_superuser(username="ops", password="pw"))
    return client


def failed_task(order_id: str) -> TaskResult:
    envelope = {"event_id": str(uuid.uuid4()), "event_type": "orders.order.created", "aggregate_id": order_id}
    return TaskResult.objects.create(
        task_id=str(uuid.uuid4()), task_name=catalogue.BILLING_HANDLE_ORDER_CREATED, status="FAILURE",
        task_kwargs="{envelope: ...}", date_done=timezone.now(),
        result=json.dumps({"exc_type": "GatewayUnavailable", "exc_message": ["simulated gateway outage"]}),
        traceback="Traceback (most recent call last): ...",
        meta=json.dumps({"queue": "billing.events", "retries": 5, "envelope": envelope}),
    )  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "/admin/orders/order/", "/admin/orders/order/?status__exact=PENDING", "/admin/orders/order/?q=buyer",
        "/admin/messaging/deadletter/", "/admin/messaging/outboxevent/", "/admin/messaging/processedevent/",
        "/admin/billing/payment/", "/admin/billing/simulatedcharge/", "/admin/billing/simulatedgatewayoutage/",
        "/admin/fraud/fraudcheck/", "/admin/fraud/blockedbuyer/",
    ],
)  # fmt: skip
def test_admin_lists_render(operator, user, url):
    make_order(user)
    assert operator.get(url).status_code == 200


def test_order_page_shows_history_and_status_is_read_only(operator, user):
    order = make_order(user)
    failed_task(str(order.id))
    page = operator.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert "recorded orders.order.created v1" in page
    assert "failed for good after 6 attempts (dead letter)" in page
    assert 'name="status"' not in page


def test_dead_letter_page_shows_failure_details(operator, user):
    order = make_order(user)
    task = failed_task(str(order.id))
    listing = operator.get("/admin/messaging/deadletter/").content.decode()
    assert "GatewayUnavailable" in listing
    page = operator.get(f"/admin/messaging/deadletter/{task.pk}/change/").content.decode()
    assert "Traceback" in page
    assert str(order.id) in page
    assert "billing.events" in page


def test_blocklist_is_editable(operator):
    response = operator.post("/admin/fraud/blockedbuyer/add/", {"buyer": "mallory@example.com", "reason": "fraud"})
    assert response.status_code == 302
    assert BlockedBuyer.objects.filter(buyer="mallory@example.com").exists()


def test_api_tokens_are_listed_masked_and_a_new_one_is_shown_once(operator, user):
    token = Token.objects.create(user=user)
    listing = operator.get("/admin/authtoken/tokenproxy/").content.decode()
    assert token.key[:4] in listing
    assert token.key not in listing
    someone = get_user_model().objects.create_user(username="someone")
    response = operator.post("/admin/authtoken/tokenproxy/add/", {"user": someone.pk}, follow=True)
    assert Token.objects.get(user=someone).key in response.content.decode()
    assert Token.objects.get(user=someone).key not in operator.get("/admin/authtoken/tokenproxy/").content.decode()


@pytest.mark.parametrize(
    "url", ["/admin/django_celery_results/taskresult/", "/admin/django_celery_results/groupresult/"]
)
def test_the_records_behind_dead_letters_cannot_be_edited_or_deleted_in_the_admin(operator, url):
    failed_task(str(uuid.uuid4()))
    assert operator.get(url).status_code == 404
