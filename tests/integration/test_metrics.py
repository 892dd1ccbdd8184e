"""Metrics through real processes: gunicorn with two workers, the relay and both workers, each scraped."""

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token

from ordering import catalogue
from tests.integration.conftest import process_env, wait_for_status
from tests.integration.test_dead_letters import dead_letter, send_poison
from tests.processes import ManagedProcess, ProcessGroup, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=5)
    assert response.status_code == 200, response.text[:500]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def exporter_url(process: ManagedProcess) -> str:
    assert process.metrics_port is not None
    return f"http://127.0.0.1:{process.metrics_port}/metrics"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def web(system, django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[str]:
    """gunicorn with two workers on the test database; its base URL."""
    port = free_port()
    group = ProcessGroup(env=process_env(), log_dir=tmp_path_factory.mktemp("web-logs"))
    group.add_web("web", port, workers=2)
    base_url = f"http://127.0.0.1:{port}"
    try:
        group.start_all()
        wait_until(lambda: _answers(f"{base_url}/health/live"), timeout=30, message="web to answer")
        yield base_url
    finally:
        group.stop_all()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or still loading the application
        return False


def test_an_order_is_counted_once_by_every_process_that_sees_it(system, web, user):
    relay, billing, orders = (exporter_url(system[name]) for name in ("relay", "billing", "orders"))
    before = {url: scrape(url) for url in (relay, billing, orders)}
    token = Token.objects.create(user=user)
    response = requests.post(
        f"{web}/api/orders/",
        json={"product_name": "lamp", "quantity": 1, "price": "30.00", "buyer": "metrics@example.com"},
        headers={"Authorization": f"Token {token.key}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    wait_for_status(response.json()["id"], "PROCESSED")

    def grew(url: str, name: str, **labels: str) -> float:
        return value(scrape(url), name, **labels) - value(before[url], name, **labels)

    processed = {"status": "PROCESSED"}
    wait_until(
        lambda: grew(orders, "ordering_orders_terminal_total", **processed) == 1,
        timeout=10,
        message="the orders worker to count the order PROCESSED",
    )
    assert grew(orders, "ordering_order_completion_seconds_count", **processed) == 1
    assert 0 < grew(orders, "ordering_order_completion_seconds_sum", **processed) < 30

    # The relay published both events of the order, each counted once.
    for event_type in (catalogue.ORDER_CREATED, catalogue.PAYMENT_CAPTURED):
        assert grew(relay, "ordering_events_published_total", event_type=event_type) == 1, event_type

    # Each worker's exporter adds up its pool processes (two each): one message handled per task.
    handled = {"outcome": "handled"}
    for url, task in (
        (billing, catalogue.BILLING_HANDLE_ORDER_CREATED),
        (orders, catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED),
    ):
        assert grew(url, "ordering_consumer_messages_total", task=task, **handled) == 1, task
        assert grew(url, "ordering_consumer_batch_duration_seconds_count", task=task) >= 1, task
        assert value(scrape(url), "ordering_consumer_batches_in_progress", task=task) == 0, task

    # Web counted the order once, whichever of its two workers answers the scrape; it alone reads the
    # database at scrape time. Workers do not count orders created, nor serve the database gauges.
    for _ in range(6):
        samples = scrape(f"{web}/metrics")
        assert value(samples, "ordering_orders_created_total", currency="EUR") == 1
        assert value(samples, "ordering_outbox_backlog") == 0
        assert value(samples, "ordering_outbox_oldest_unpublished_age_seconds") == 0
        assert ("ordering_orders_stuck", frozenset({("state", "missing")})) in samples
    for url in (relay, billing, orders):
        samples = scrape(url)
        assert value(samples, "ordering_orders_created_total", currency="EUR") == 0, url
        assert not any(name.startswith("ordering_outbox_") for name, _ in samples), url


def test_a_dead_letter_is_counted_by_queue_and_exception(system):
    billing = exporter_url(system["billing"])
    labels = {"queue": catalogue.BILLING_QUEUE, "exception": "MalformedEnvelope"}
    before = value(scrape(billing), "ordering_dead_letters_total", **labels)
    dead_lettered = {"task": catalogue.BILLING_HANDLE_ORDER_CREATED, "outcome": "dead_lettered"}
    rejected_before = value(scrape(billing), "ordering_consumer_messages_total", **dead_lettered)
    dead_letter(send_poison({"not": "an envelope"}))
    wait_until(
        lambda: value(scrape(billing), "ordering_dead_letters_total", **labels) == before + 1,
        timeout=10,
        message="the billing worker to count the dead letter",
    )
    assert value(scrape(billing), "ordering_consumer_messages_total", **dead_lettered) == rejected_before + 1
