"""Idempotency-Key on POST /api/orders/: replays, mismatches, keys in flight, expiry, and races."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from ordering.idempotency.models import IdempotencyKey
from ordering.messaging.models import OutboxEvent
from orders import apis
from orders.models import Order
from tests.commands import command_output

pytestmark = pytest.mark.django_db

ORDER = {"product_name": "Kettle", "quantity": 1, "price": "39.90", "buyer": "kim@example.com"}


def post(client: APIClient, key: str | None, body: dict = ORDER):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/orders/", body, format="json", **headers)


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def test_a_retry_replays_the_first_response_and_creates_nothing(api_client):
    key = str(uuid.uuid4())
    first = post(api_client, key)
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first

    again = post(api_client, key, {**ORDER})
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert Order.objects.count() == 1
    assert OutboxEvent.objects.count() == 1


def test_the_same_body_in_another_key_order_or_spacing_is_the_same_request(api_client):
    assert post(api_client, "k-1").status_code == 201
    reordered = dict(reversed(list(ORDER.items())))
    assert post(api_client, "k-1", reordered)["Idempotent-Replayed"] == "true"


def test_the_drafts_quoted_form_of_a_key_is_the_same_key(api_client):
    assert post(api_client, "abc-123").status_code == 201
    assert post(api_client, '"abc-123"')["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_the_same_key_with_a_different_body_is_422(api_client):
    assert post(api_client, "k-2").status_code == 201
    response = post(api_client, "k-2", {**ORDER, "quantity": 2})
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_mismatch"
    assert Order.objects.count() == 1


def test_keys_are_per_client(api_client):
    assert post(api_client, "shared").status_code == 201
    other = APIClient()
    other.force_authenticate(get_user_model().objects.create_user(username="other-client"))
    response = post(other, "shared")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Order.objects.count() == 2
    assert IdempotencyKey.objects.filter(key="shared").count() == 2


def test_an_expired_key_runs_again_and_purge_removes_expired_keys(api_client, user):
    first = post(api_client, "old")
    IdempotencyKey.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))

    again = post(api_client, "old")
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert again.json()["id"] != first.json()["id"]
    assert IdempotencyKey.objects.get(key="old").expires_at > timezone.now() + timedelta(hours=23)

    assert post(api_client, "stale").status_code == 201
    IdempotencyKey.objects.filter(key="stale").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert command_output("purge_idempotency_keys").strip() == "purged 1 expired idempotency keys"
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["old"]


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there", '""'])
def test_a_malformed_key_is_400_and_nothing_is_stored(api_client, key):
    response = post(api_client, key)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_invalid"
    assert not Order.objects.exists()
    assert not IdempotencyKey.objects.exists()


def test_a_key_of_255_printable_characters_is_accepted(api_client):
    assert post(api_client, "~" * 255).status_code == 201


def test_a_validation_error_is_stored_and_replayed_as_the_same_400(api_client):
    bad = {**ORDER, "price": "-1.00"}
    first = post(api_client, "k-bad", bad)
    assert first.status_code == 400
    assert "price" in first.json()

    again = post(api_client, "k-bad", bad)
    assert again.status_code == 400
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # As Stripe: the key is spent on that request; corrected input needs a new key.
    assert post(api_client, "k-bad", ORDER).status_code == 422
    assert not Order.objects.exists()


def test_a_server_error_stores_nothing_and_the_retry_runs(api_client, monkeypatch):
    real = apis.order_create

    def unavailable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(apis, "order_create", unavailable)
    assert post(api_client, "k-503").status_code == 503
    assert not IdempotencyKey.objects.exists()

    monkeypatch.setattr(apis, "order_create", real)
    retry = post(api_client, "k-503")
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert Order.objects.count() == 1


def test_without_the_header_every_request_creates_an_order(api_client):
    assert post(api_client, None).status_code == 201
    assert post(api_client, None).status_code == 201
    assert Order.objects.count() == 2
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_key_in_flight_is_409_then_replays_once_the_first_request_finished(user, monkeypatch):
    """The first request is held inside order_create (its transaction open, its key claimed)."""
    claimed, release = threading.Event(), threading.Event()
    real = apis.order_create

    def held(**fields):
        claimed.set()
        assert release.wait(timeout=60), "the test never released the first request"
        return real(**fields)

    monkeypatch.setattr(apis, "order_create", held)
    client, first_client = token_client(user), token_client(user)
    responses = {}

    def first():
        try:
            responses["first"] = post(first_client, "k-flight")
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert claimed.wait(timeout=60)
        conflict = post(client, "k-flight")
        assert conflict.status_code == 409
        assert conflict["Retry-After"] == "1"
        assert conflict.json()["code"] == "idempotency_key_in_flight"
        # A key's mismatch cannot be known before its first request commits: also 409, never 422.
        assert post(client, "k-flight", {**ORDER, "quantity": 3}).status_code == 409
    finally:
        release.set()
        thread.join(timeout=60)

    assert responses["first"].status_code == 201
    replay = post(client, "k-flight")
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == responses["first"].json()
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_exactly_one_order(user):
    threads = 8
    start = threading.Barrier(threads)
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    clients = [token_client(user) for _ in range(threads)]

    def client_request(client: APIClient):
        try:
            start.wait(timeout=60)
            response = post(client, "k-race")
            with lock:
                statuses.append((response.status_code, response.get("Idempotent-Replayed")))
        finally:
            connection.close()

    workers = [threading.Thread(target=client_request, args=(client,)) for client in clients]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert len(statuses) == threads
    assert Order.objects.count() == 1
    assert statuses.count((201, None)) == 1, statuses
    assert all(answer in {(201, None), (201, "true"), (409, None)} for answer in statuses), statuses
    assert IdempotencyKey.objects.get(key="k-race").status_code == 201
