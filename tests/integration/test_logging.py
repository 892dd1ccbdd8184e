"""Structured logs of real processes: every line JSON, an order's ids on every line about it, in every process."""

import json
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
from django.utils import timezone
from rest_framework.authtoken.models import Token

from billing.models import SimulatedGatewayOutage
from ordering import catalogue
from ordering.messaging import selectors
from tests.chaos.system import free_port, wait_for_web
from tests.integration.conftest import RETRY_MAX, process_env, wait_for_status
from tests.processes import ManagedProcess, ProcessGroup, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

Record = dict
Predicate = Callable[[Record], bool]


@pytest.fixture
def web(tmp_path) -> Iterator[tuple[ManagedProcess, str]]:
    """gunicorn as the Procfile runs it, JSON logs at INFO, next to the package's relay and workers."""
    port = free_port()
    group = ProcessGroup(env=process_env(), log_dir=tmp_path)
    process = group.add_web("web", port, workers=1, LOG_FORMAT="json", LOG_LEVEL="INFO")
    try:
        process.start()
        wait_for_web(f"http://127.0.0.1:{port}")
        yield process, f"http://127.0.0.1:{port}"
    finally:
        group.stop_all()


# The only lines that are not JSON: Celery's shutdown notices, which its signal handlers write
# straight to stdout, each after an empty line (logging is not safe inside a signal handler).
CELERY_SIGNAL_NOTICE = re.compile(
    r"|worker: (Warm|Cold) shutdown \(MainProcess\)|worker: Hitting Ctrl\+C again .*"
    r"|Waiting gracefully for cold shutdown to complete\.\.\.|Restarting celery worker \(.*\)"
)


def records(process: ManagedProcess) -> list[Record]:
    """Every complete line the process wrote to stdout and stderr, each of which must be a JSON object."""
    lines = process.log_text().split("\n")[:-1]  # the last one may be half written
    celery_worker = "worker" in process.command
    parsed = []
    for line in lines:
        if celery_worker and CELERY_SIGNAL_NOTICE.fullmatch(line):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{process.name} wrote a line that is not JSON: {line!r}")
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def find(process: ManagedProcess, predicate: Predicate, timeout: float = 10) -> Record:
    """The first line of `process` that `predicate` accepts, waiting for it to be written."""
    found: list[Record] = []

    def written() -> bool:
        found[:] = [r for r in records(process) if predicate(r)]
        return bool(found)

    wait_until(written, timeout=timeout, message=f"a line of {process.name}")
    return found[0]


def about(order_id: str, correlation_id: str, *, message: str, logger: str | None = None) -> Predicate:
    """A line with the order's id and its correlation id as fields, whose message contains `message`."""

    def accepts(record: Record) -> bool:
        return (
            record.get("order_id") == order_id
            and record.get("correlation_id") == correlation_id
            and message in record.get("message", "")
            and (logger is None or record.get("logger") == logger)
        )

    return accepts


def post_order(base_url: str, user, correlation_id: str) -> tuple[str, requests.Response]:
    token = Token.objects.get_or_create(user=user)[0]
    response = requests.post(
        f"{base_url}/api/orders/",
        json={"product_name": "lamp", "price": "30.00", "buyer": f"{user.username}@example.com"},
        headers={"Authorization": f"Token {token.key}", "X-Correlation-ID": correlation_id},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"]), response


def test_every_line_is_json_and_an_order_s_ids_are_on_each_line_about_it(system, web, user):
    web_process, base_url = web
    correlation_id = f"log-{uuid.uuid4().hex[:12]}"
    order_id, response = post_order(base_url, user, correlation_id)
    assert response.headers["X-Correlation-ID"] == correlation_id
    wait_for_status(order_id, "PROCESSED")

    # Web: the service's line and gunicorn's access line.
    find(web_process, about(order_id, correlation_id, message=f"order {order_id} created", logger="orders.services"))
    access = find(web_process, about(order_id, correlation_id, message="POST /api/orders/", logger="gunicorn.access"))
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/orders/", 201)
    assert access["duration_ms"] > 0

    # The relay: a line per batch, each event's ids in its `events` field.
    relayed = {
        event["event_type"]
        for record in records(system["relay"])
        for event in record.get("events", [])
        # Other tests' events share the relay; one recorded outside a request has no correlation id.
        if (event.get("order_id"), event.get("correlation_id")) == (order_id, correlation_id)
    }
    assert relayed == {catalogue.ORDER_CREATED, catalogue.PAYMENT_CAPTURED}

    # The workers: Celery's received and succeeded lines, with the task and the event's ids.
    for name, task in (
        ("billing", catalogue.BILLING_HANDLE_ORDER_CREATED),
        ("orders", catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED),
    ):
        received = find(system[name], about(order_id, correlation_id, message=f"Task {task}["))
        assert received["message"] == f"Task {task}[{received['task_id']}] received"
        assert (received["task"], received["level"]) == (task, "INFO")
        succeeded = find(system[name], about(order_id, correlation_id, message=f"[{received['task_id']}] succeeded"))
        assert succeeded["event_id"] == received["event_id"]
        # What the handler logged while handling the event carries its ids too.
        handler_lines = [r for r in records(system[name]) if r.get("event_id") == received["event_id"]]
        assert {r["logger"] for r in handler_lines} - {"ordering.messaging.batching"}, handler_lines

    # No line of any process names the order without its correlation id.
    for process in (web_process, *system.processes.values()):
        for record in records(process):
            if record.get("order_id") == order_id:
                assert record.get("correlation_id") == correlation_id, record


def test_a_dead_lettered_order_s_warning_and_retries_carry_its_ids(system, web, user):
    _, base_url = web
    SimulatedGatewayOutage.objects.create(until=timezone.now() + timezone.timedelta(minutes=5))
    try:
        correlation_id = f"log-dl-{uuid.uuid4().hex[:12]}"
        order_id, _ = post_order(base_url, user, correlation_id)
        wait_until(
            lambda: selectors.dead_letters_for_order(order_id), timeout=60, message="the order's task dead-lettered"
        )
    finally:
        SimulatedGatewayOutage.objects.update(until=timezone.now())
    billing = system["billing"]
    dead_lettered = find(billing, about(order_id, correlation_id, message=f"order {order_id}: "))
    assert dead_lettered["level"] == "WARNING"
    assert dead_lettered["message"].startswith(
        f"order {order_id}: {catalogue.BILLING_HANDLE_ORDER_CREATED} dead-lettered to "
        f"{catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)} after {RETRY_MAX + 1} attempts: GatewayUnavailable"
    )
    assert dead_lettered["task"] == catalogue.BILLING_HANDLE_ORDER_CREATED
    # Each retry is a new message, received with the order's ids like the first.
    received = [r for r in records(billing) if about(order_id, correlation_id, message="] received")(r)]
    assert len(received) == RETRY_MAX + 1
    retries = [r for r in records(billing) if about(order_id, correlation_id, message="] retry: Retry in")(r)]
    assert len(retries) == RETRY_MAX
