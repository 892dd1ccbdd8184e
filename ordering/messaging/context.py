"""Which request or event is being handled: its correlation id, and the causation id it implies."""

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from log_request_id import local

_causation_id: ContextVar[uuid.UUID | None] = ContextVar("causation_id", default=None)

MAX_CORRELATION_ID_LENGTH = 100  # OutboxEvent.correlation_id
# What a client may send as X-Correlation-ID: letters, digits and . _ : - (a UUID, a trace id),
# at most what the outbox stores. Anything else is replaced, never echoed or logged.
CORRELATION_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_CORRELATION_ID_LENGTH}}}")


def current_correlation_id() -> str:
    """The correlation id of the request or event being handled ('' outside of one).

    It may come from a client's X-Correlation-ID header, so it is cut to what the outbox stores.
    """
    return str(getattr(local, "request_id", "") or "")[:MAX_CORRELATION_ID_LENGTH]


def current_causation_id() -> uuid.UUID | None:
    return _causation_id.get()


@contextmanager
def handling_event(*, event_id: uuid.UUID, correlation_id: str) -> Iterator[None]:
    """Run a consumer with the event's correlation id on every log line and as causation id."""
    previous = getattr(local, "request_id", None)
    token = _causation_id.set(event_id)
    local.request_id = correlation_id
    try:
        yield
    finally:
        _causation_id.reset(token)
        if previous is None:
            del local.request_id
        else:
            local.request_id = previous
