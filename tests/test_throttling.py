"""API throttles: per client, a tighter rate on create, 429 with Retry-After, counted in Redis, failing open."""

import logging

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from ordering import throttling
from orders.models import Order

pytestmark = pytest.mark.django_db

ORDER = {"product_name": "Mug", "quantity": 1, "price": "9.90", "buyer": "lee@example.com"}


@pytest.fixture
def low_rates(monkeypatch):
    """DRF reads the rates into SimpleRateThrottle when it is imported: patch them there."""
    rates = {"user": "100/min", "create": "3/min", "anon": None}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    return rates


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def create(client: APIClient):
    return client.post("/api/orders/", ORDER, format="json")


def test_creates_beyond_the_rate_are_429_with_retry_after(user, low_rates):
    client = token_client(user)
    assert [create(client).status_code for _ in range(3)] == [201, 201, 201]
    refused = create(client)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 60
    assert Order.objects.count() == 3
    # Only creating is limited that tightly: the client can still read.
    assert client.get("/api/orders/").status_code == 200


def test_the_count_is_per_client_and_shared_through_redis(user, django_user_model, low_rates):
    # Two clients of one user (as two gunicorn workers would see them) share one count.
    first, second = token_client(user), token_client(user)
    assert create(first).status_code == 201
    assert create(second).status_code == 201
    assert create(first).status_code == 201
    assert create(second).status_code == 429
    # The count lives in Redis, under this run's prefix, where every web process reads it.
    server = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    assert server.exists(f"{prefix}:1:throttle_create_{user.pk}")
    # Another client has its own count.
    other = token_client(django_user_model.objects.create_user(username="another-client"))
    assert create(other).status_code == 201


def test_throttling_fails_open_when_redis_is_unreachable(user, low_rates, monkeypatch, caplog):
    monkeypatch.setattr(throttling, "_last_warning", float("-inf"))
    unreachable = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    client = token_client(user)
    with override_settings(CACHES={"default": unreachable}), caplog.at_level(logging.WARNING, "ordering.throttling"):
        statuses = [create(client).status_code for _ in range(5)]
    assert statuses == [201] * 5
    warnings = [record for record in caplog.records if record.name == "ordering.throttling"]
    assert len(warnings) == 1, "one warning a minute, not one per request"
    assert "throttle cache unavailable" in warnings[0].getMessage()


def test_a_rate_of_none_turns_a_throttle_off(user, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": None, "create": None, "anon": None})
    client = token_client(user)
    assert {create(client).status_code for _ in range(5)} == {201}


def test_the_settings_read_none_from_the_environment_as_off(monkeypatch):
    from ordering.settings import _throttle_rate

    monkeypatch.setenv("API_THROTTLE_CREATE_RATE", "none")
    assert _throttle_rate("API_THROTTLE_CREATE_RATE", "120/min") is None
    monkeypatch.setenv("API_THROTTLE_CREATE_RATE", "10/s")
    assert _throttle_rate("API_THROTTLE_CREATE_RATE", "120/min") == "10/s"
    monkeypatch.delenv("API_THROTTLE_CREATE_RATE")
    assert _throttle_rate("API_THROTTLE_CREATE_RATE", "120/min") == "120/min"
