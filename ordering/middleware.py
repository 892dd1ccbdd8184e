"""Request middleware of the web process."""

import contextlib

from django.http import HttpRequest, HttpResponse
from log_request_id import local
from log_request_id.middleware import RequestIDMiddleware

from ordering.logging import ORDER_ID_ENVIRON_KEY
from ordering.messaging.context import CORRELATION_ID_PATTERN, handling_request


class CorrelationIdMiddleware(RequestIDMiddleware):
    """django-log-request-id's middleware, taking the client's X-Correlation-ID only if well-formed.

    The id is echoed in the response, written on every log line and carried in every event of
    the request: a client-sent one of another shape (8,000 characters, control characters) gets
    a generated one instead. The order a request concerned (`concerns_order`) is on its log lines
    too, and is left in the WSGI environ for gunicorn's access line.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with handling_request() as fields:
            try:
                response = super().__call__(request)
            finally:
                # django-log-request-id forgets the id on request_finished, which fires only when
                # the server closes the response: a caller that never does (a WSGI test harness)
                # would leave it on every later line of this thread.
                _forget_request_id()
        if order_id := fields.get("order_id"):
            request.META[ORDER_ID_ENVIRON_KEY] = order_id
        return response

    def _get_request_id(self, request: HttpRequest) -> str:
        sent = request.META.get(self.request_id_header, "")
        return sent if CORRELATION_ID_PATTERN.fullmatch(sent) else self._generate_id()


def _forget_request_id() -> None:
    with contextlib.suppress(AttributeError):  # already forgotten
        del local.request_id
