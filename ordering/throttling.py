"""Per-client API rate limits: DRF's throttles, counted in the shared cache (Redis), failing open.

The counters live in Django's default cache, Redis (CACHE_URL), so every gunicorn worker and web
container counts the same client together. When Redis cannot be reached, a throttle lets the
request through and logs a warning (at most once a minute per process): rate limiting is a
protection against abusive clients, and an outage of its counter store must not turn into an outage
of the API. DRF keeps a list of request times per client and writes it back unlocked, so requests
racing across workers can undercount a little: the limits are approximate, as DRF documents.
"""

import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rest_framework import throttling

if TYPE_CHECKING:  # DRF imports throttle classes while rest_framework.views is still loading
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

_WARN_EVERY_SECONDS = 60.0
_last_warning = 0.0


class _FailOpen:
    def allow_request(self, request: "Request", view: "APIView") -> bool:
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            _warn_unavailable(self.scope, exc)
            return True


def _warn_unavailable(scope: str, exc: Exception) -> None:
    global _last_warning  # noqa: PLW0603 -- one warning a minute per process, not one per request
    now = time.monotonic()
    if now - _last_warning >= _WARN_EVERY_SECONDS:
        _last_warning = now
        logger.warning("throttle cache unavailable, %r not limited (warned once a minute): %s", scope, exc)


class UserRateThrottle(_FailOpen, throttling.UserRateThrottle):
    """Every API request of an authenticated client (rate "user"), by user id."""


class AnonRateThrottle(_FailOpen, throttling.AnonRateThrottle):
    """Requests without credentials (rate "anon"), by client IP address."""


class CreateRateThrottle(_FailOpen, throttling.UserRateThrottle):
    """The creates of a client (rate "create"), on top of its "user" rate: the expensive, abusable call."""

    scope = "create"
