"""Request middleware of the web process."""

from django.http import HttpRequest
from log_request_id.middleware import RequestIDMiddleware

from ordering.messaging.context import CORRELATION_ID_PATTERN


class CorrelationIdMiddleware(RequestIDMiddleware):
    """django-log-request-id's middleware, taking the client's X-Correlation-ID only if well-formed.

    The id is echoed in the response, written on every log line and carried in every event of
    the request: a client-sent one of another shape (8,000 characters, control characters) gets
    a generated one instead.
    """

    def _get_request_id(self, request: HttpRequest) -> str:
        sent = request.META.get(self.request_id_header, "")
        return sent if CORRELATION_ID_PATTERN.fullmatch(sent) else self._generate_id()
