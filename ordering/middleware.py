"""Request middleware of the web process."""

from django.http import HttpRequest, HttpResponse
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
            response = super().__call__(request)
        if order_id := fields.get("order_id"):
            request.META[ORDER_ID_ENVIRON_KEY] = order_id
        return response

    def _get_request_id(self, request: HttpRequest) -> str:
        sent = request.META.get(self.request_id_header, "")
        return sent if CORRELATION_ID_PATTERN.fullmatch(sent) else self._generate_id()
