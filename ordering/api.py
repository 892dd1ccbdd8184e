"""API-wide behaviour: a database outage is 503 Service Unavailable, not a 500 with a traceback;
an unknown URL under /api/ is a JSON 404, as the schema documents, not Django's HTML page."""

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
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


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's handler404. An id the API's routes do not match (e.g. `/api/orders/a.b/`: DRF's
    lookup excludes dots) never reaches a view, so the view's JSON 404 cannot answer it."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
