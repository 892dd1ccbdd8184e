"""Login lockout (django-axes): per (username, IP address), on the admin and the browsable API's login."""

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ADMIN_LOGIN = "/admin/login/"
API_LOGIN = "/api/auth/login/"
LOCKED_OUT = 429


@pytest.fixture
def staff():
    return get_user_model().objects.create_user(username="ops-staff", password="right-password", is_staff=True)


def login(url: str, username: str, password: str, ip: str = "203.0.113.7"):
    return Client(REMOTE_ADDR=ip).post(url, {"username": username, "password": password})


def fail_until_locked(url: str, username: str, ip: str = "203.0.113.7") -> list[int]:
    return [login(url, username, "wrong", ip).status_code for _ in range(settings.AXES_FAILURE_LIMIT)]


@pytest.mark.parametrize("url", [ADMIN_LOGIN, API_LOGIN])
def test_the_right_password_is_refused_after_too_many_wrong_ones(staff, url):
    statuses = fail_until_locked(url, staff.username)
    # The form answers each failure (200); the failure that reaches the limit is the lockout.
    assert statuses == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [LOCKED_OUT]
    response = login(url, staff.username, "right-password")
    assert response.status_code == LOCKED_OUT
    assert b"too many login attempts" in response.content.lower()
    assert "_auth_user_id" not in response.client.session


def test_the_lockout_is_per_username_and_ip_address(staff):
    other = get_user_model().objects.create_user(username="ops-other", password="other-password", is_staff=True)
    fail_until_locked(ADMIN_LOGIN, staff.username)
    # The same user from another address, and another user from the same address, still log in.
    assert login(ADMIN_LOGIN, staff.username, "right-password", ip="198.51.100.9").status_code == 302
    assert login(ADMIN_LOGIN, other.username, "other-password").status_code == 302
    assert login(ADMIN_LOGIN, staff.username, "right-password").status_code == LOCKED_OUT


def test_a_successful_login_resets_the_failure_count(staff):
    for _ in range(2):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            assert login(ADMIN_LOGIN, staff.username, "wrong").status_code == 200
        assert login(ADMIN_LOGIN, staff.username, "right-password").status_code == 302
    assert not AccessAttempt.objects.filter(username=staff.username).exists()


def test_a_forged_forwarded_for_header_does_not_escape_the_lockout(staff):
    """Without TRUSTED_PROXY_COUNT, only REMOTE_ADDR counts: X-Forwarded-For is the client's to forge."""
    fail_until_locked(ADMIN_LOGIN, staff.username)
    forged = Client(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="192.0.2.1").post(
        ADMIN_LOGIN, {"username": staff.username, "password": "right-password"}
    )
    assert forged.status_code == LOCKED_OUT


def test_api_tokens_are_not_affected_by_a_lockout(staff):
    fail_until_locked(API_LOGIN, staff.username)
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    assert client.get("/api/orders/").status_code == 200
