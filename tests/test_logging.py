"""Log lines: the formatters and filters of settings.LOGGING, and the ids they put on every line."""

import copy
import io
import json
import logging
import logging.config
import uuid
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.http import HttpResponse
from gunicorn.glogging import SafeAtoms

from ordering import catalogue
from ordering.celery import app
from ordering.logging import ORDER_ID_ENVIRON_KEY
from ordering.messaging.consumer import Delivery
from ordering.messaging.context import concerns_order, current_correlation_id, handling_event, handling_request
from ordering.messaging.envelope import Envelope
from ordering.messaging.relay import task_message
from ordering.middleware import CorrelationIdMiddleware

ORDER_ID = "4242"
CORRELATION_ID = "corr-log-1"


def envelope() -> Envelope:
    return Envelope(
        event_id=uuid.uuid4(),
        event_type=catalogue.ORDER_CREATED,
        version=1,
        occurred_at=datetime.now(UTC),
        aggregate_id=ORDER_ID,
        correlation_id=CORRELATION_ID,
        causation_id=None,
        payload={"order_id": ORDER_ID},
    )


class Console:
    """settings.LOGGING's console handler (its filters and the formatter `log_format`), writing to a string."""

    def __init__(self, log_format: str) -> None:
        configurator = logging.config.DictConfigurator(copy.deepcopy(settings.LOGGING))
        config = configurator.config
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(configurator.configure_formatter(config["formatters"][log_format]))
        for name in config["handlers"]["console"]["filters"]:
            self.handler.addFilter(configurator.configure_filter(config["filters"][name]))
        self.access_filter = configurator.configure_filter(config["filters"]["access"])

    def emit(self, record: logging.LogRecord) -> str:
        self.handler.handle(record)
        return self.stream.getvalue().splitlines()[-1]

    def log(self, message: str, *args: object, **extra: object) -> str:
        return self.emit(record("tests.logging", message, *args, **extra))

    def log_json(self, message: str, *args: object, **extra: object) -> dict:
        return json.loads(self.log(message, *args, **extra))


def record(name: str, message: str, *args: object, **extra: object) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, logging.INFO, __file__, 1, message, args, None, extra=extra)


@pytest.fixture
def json_console() -> Console:
    return Console("json")


def test_json_line_has_level_logger_message_and_time(json_console):
    line = json_console.log_json("order %s created", ORDER_ID)
    assert line["level"] == "INFO"
    assert line["logger"] == "tests.logging"
    assert line["message"] == f"order {ORDER_ID} created"
    assert datetime.fromisoformat(line["time"]).tzinfo is not None
    # Outside of a request or event: no id is invented.
    assert not {"correlation_id", "order_id", "event_id"} & set(line)


def test_a_line_logged_while_an_event_is_handled_carries_its_ids(json_console):
    event = envelope()
    with handling_event(event):
        line = json_console.log_json("billing: order %s CAPTURED", ORDER_ID)
    assert (line["correlation_id"], line["order_id"], line["event_id"]) == (
        CORRELATION_ID,
        ORDER_ID,
        str(event.event_id),
    )
    assert "order_id" not in json_console.log_json("after the event")


def test_a_line_logged_while_a_request_about_an_order_is_handled_carries_its_id(json_console):
    with handling_request() as fields:
        assert "order_id" not in json_console.log_json("before the order exists")
        concerns_order(4242)
        assert json_console.log_json("order created")["order_id"] == ORDER_ID
    assert fields == {"order_id": ORDER_ID}
    assert "order_id" not in json_console.log_json("after the request")


def test_outside_a_request_naming_an_order_is_forgotten_at_once(json_console):
    concerns_order(4242)
    assert "order_id" not in json_console.log_json("a service called from a shell")


def test_task_lines_carry_the_ids_the_relay_put_in_the_message_headers(json_console):
    event = envelope()
    message = task_message(app, event, catalogue.BILLING_HANDLE_ORDER_CREATED, catalogue.BILLING_QUEUE)
    delivery = Delivery(headers=message.headers, properties=message.properties, delivery_info={}, body=message.body)
    line = json_console.log_json("Task %s[%s] received", "t", delivery.task_id, **delivery.log_fields())
    assert line["task"] == catalogue.BILLING_HANDLE_ORDER_CREATED
    assert line["task_id"] == delivery.task_id
    assert (line["event_id"], line["event_type"]) == (str(event.event_id), catalogue.ORDER_CREATED)
    assert (line["order_id"], line["correlation_id"]) == (ORDER_ID, CORRELATION_ID)
    # A retry is a new message: the request it is built from names the event too.
    assert delivery.request().headers == {
        "event_id": str(event.event_id),
        "event_type": catalogue.ORDER_CREATED,
        "aggregate_id": ORDER_ID,
        "correlation_id": CORRELATION_ID,
    }


def test_a_task_line_keeps_its_own_ids_inside_an_event(json_console):
    with handling_event(envelope()):
        line = json_console.log_json("Task x[y] received", correlation_id="other", order_id="7")
    assert (line["correlation_id"], line["order_id"]) == ("other", "7")


def test_gunicorn_access_line_becomes_fields(json_console):
    atoms = SafeAtoms(
        {
            "m": "POST",
            "U": "/api/orders/",
            "s": "201",
            "D": 12_345,
            "{x-correlation-id}o": CORRELATION_ID,
            f"{{{ORDER_ID_ENVIRON_KEY}}}e": ORDER_ID,
        }
    )
    access = record("gunicorn.access", '%(m)s %(U)s" %(s)s', atoms)
    assert json_console.access_filter.filter(access)
    line = json.loads(json_console.emit(access))
    assert line["message"] == 'POST /api/orders/" 201'
    assert (line["method"], line["path"], line["status"], line["duration_ms"]) == ("POST", "/api/orders/", 201, 12.345)
    assert (line["correlation_id"], line["order_id"]) == (CORRELATION_ID, ORDER_ID)


def test_gunicorn_access_line_without_ids_has_none(json_console):
    access = record("gunicorn.access", "%(m)s %(U)s", SafeAtoms({"m": "GET", "U": "/health/", "s": "200", "D": 1}))
    json_console.access_filter.filter(access)
    line = json.loads(json_console.emit(access))
    assert "correlation_id" not in line
    assert "order_id" not in line


def test_text_lines_are_readable_with_the_correlation_id():
    console = Console("text")
    with handling_event(envelope()):
        line = console.log("order %s: PROCESSED", ORDER_ID)
    assert line.endswith(f" INFO [{CORRELATION_ID}] tests.logging order {ORDER_ID}: PROCESSED")
    assert console.log("no request").endswith(" INFO [-] tests.logging no request")


@pytest.mark.django_db
def test_web_leaves_the_created_order_in_the_environ_for_the_access_line(api_client, user):
    body = {"product_name": "lamp", "price": "30.00", "buyer": f"{user.username}@example.com"}
    response = api_client.post("/api/orders/", body, format="json", HTTP_X_CORRELATION_ID=CORRELATION_ID)
    assert response.status_code == 201
    assert response["X-Correlation-ID"] == CORRELATION_ID
    assert response.wsgi_request.META[ORDER_ID_ENVIRON_KEY] == str(response.json()["id"])
    listing = api_client.get("/api/orders/")
    assert ORDER_ID_ENVIRON_KEY not in listing.wsgi_request.META


def test_a_request_leaves_no_correlation_id_behind_even_if_its_response_is_never_closed(rf):
    # The server closes a response (request_finished); a harness that does not must not leak the
    # id onto every later line of the thread.
    def view(request):
        assert current_correlation_id() == CORRELATION_ID
        return HttpResponse("ok")

    response = CorrelationIdMiddleware(view)(rf.get("/", HTTP_X_CORRELATION_ID=CORRELATION_ID))
    assert response["X-Correlation-ID"] == CORRELATION_ID
    assert current_correlation_id() == ""
