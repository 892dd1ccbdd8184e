"""API-wide behaviour: a database outage is 503 Service Unavailable, not a 500 with a traceback."""

import logging

from django.db import InterfaceError, OperationalError
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        return Response(
            {"detail": "The service is briefly unavailable; nothing was stored. Retry the request."},
            status=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    return exception_handler(exc, context)
