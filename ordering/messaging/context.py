"""Which request or event is being handled: its correlation id, the causation id it implies, and
the fields every log line written meanwhile carries (ordering/logging.py puts them on the record)."""

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from log_request_id import local

if TYPE_CHECKING:
    from ordering.messaging.envelope import Envelope

_causation_id: ContextVar[uuid.UUID | None] = ContextVar("causation_id", default=None)
# The log fields of the request or event being handled; None outside of one.
_log_fields: ContextVar[dict[str, str] | None] = ContextVar("log_fields", default=None)
_NO_FIELDS: Mapping[str, str] = {}

MAX_CORRELATION_ID_LENGTH = 100  # OutboxEvent.correlation_id
# What a client may send as X-Correlation-ID: letters, digits and . _ : - (a UUID, a trace id),
# at most what the outbox stores. Anything else is replaced, never echoed or logged.
CORRELATION_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_CORRELATION_ID_LENGTH}}}")

# Task message headers (set by the relay) naming the event a message carries, by log field; each
# is named as the envelope's field. The worker logs a message's "received" and "succeeded" lines
# from them, without decoding its body.
EVENT_HEADERS = {
    "event_id": "event_id",
    "event_type": "event_type",
    "order_id": "aggregate_id",
    "correlation_id": "correlation_id",
}


def current_correlation_id() -> str:
    """The correlation id of the request or event being handled ('' outside of one).

    It may come from a client's X-Correlation-ID header, so it is cut to what the outbox stores.
    """
    return str(getattr(local, "request_id", "") or "")[:MAX_CORRELATION_ID_LENGTH]


def current_causation_id() -> uuid.UUID | None:
    return _causation_id.get()


def current_log_fields() -> Mapping[str, str]:
    """The event id and order id of the request or event being handled, those known ({} outside of one)."""
    return _log_fields.get() or _NO_FIELDS


@contextmanager
def handling_event(envelope: "Envelope") -> Iterator[None]:
    """Run a consumer with the event's correlation id, event id and order id on every log line.

    The event is also the causation of every event recorded in the outbox meanwhile.
    """
    previous = getattr(local, "request_id", None)
    causation = _causation_id.set(envelope.event_id)
    fields = _log_fields.set({"event_id": str(envelope.event_id), "order_id": envelope.aggregate_id})
    local.request_id = envelope.correlation_id
    try:
        yield
    finally:
        _log_fields.reset(fields)
        _causation_id.reset(causation)
        if previous is None:
            del local.request_id
        else:
            local.request_id = previous


@contextmanager
def handling_request() -> Iterator[Mapping[str, str]]:
    """Web's middleware, around a request: yields the log fields the request gathered (`concerns_order`)."""
    fields: dict[str, str] = {}
    token = _log_fields.set(fields)
    try:
        yield fields
    finally:
        _log_fields.reset(token)


def concerns_order(order_id: object) -> None:
    """The request being handled is about this order: the log lines that follow carry its id.

    Outside of a request (a shell, a test calling a service) it does nothing: there is no end at
    which the id would be forgotten.
    """
    fields = _log_fields.get()
    if fields is not None:
        fields["order_id"] = str(order_id)


def event_headers(envelope: "Envelope") -> dict[str, str]:
    """The headers of a task message carrying `envelope` that name its event (EVENT_HEADERS)."""
    return {header: str(getattr(envelope, header)) for header in EVENT_HEADERS.values()}


def log_fields_of_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The log fields a task message's headers name (EVENT_HEADERS), those present."""
    return {field: headers[header] for field, header in EVENT_HEADERS.items() if headers.get(header)}
