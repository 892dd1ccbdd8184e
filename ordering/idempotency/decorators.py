"""`@idempotent`: the Idempotency-Key header on a DRF view method, with Stripe's semantics.

A client sends `Idempotency-Key: <1-255 printable ASCII characters>` (quoted as the IETF draft's
structured header, or bare as Stripe's) to make a retried POST safe. Keys are per client (the
authenticated user) and expire after IDEMPOTENCY_KEY_TTL_SECONDS. With a key:

- first request: it runs, and its response (status, JSON body, Location) is stored with the key in
  the request's own transaction (ordering/idempotency/keys.py);
- same key, same request (method, path, body as JSON, whatever its key order or spacing): the stored
  response again, with `Idempotent-Replayed: true`; the view does not run;
- same key, another request: 422; same key while the first is still running: 409 with Retry-After;
- a malformed key: 400, and nothing is stored.

Which responses are stored follows Stripe: the result of any request that began executing, so a
400 for invalid input replays as the same 400 (the client must send a new key with corrected input).
Nothing is stored when the request failed before it executed (an unparseable body, a malformed
key, authentication, throttling: all answered before the view runs) or failed with a 5xx (a server
error or an outage: its transaction rolls back with the key, and the client retries with the same
key). Without the header a request runs as it always did, with no extra statement.
"""

import functools
import hashlib
import json
import re
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ordering.idempotency.keys import (
    Claim,
    StoredResponse,
    idempotency_key_claim,
    idempotency_key_record,
    idempotency_key_stored,
)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
IN_FLIGHT_RETRY_AFTER_SECONDS = "1"
# The header values _parse_key accepts, as the OpenAPI schema publishes them (ECMA 262, no
# lookarounds): one character; 2-255 not both starting and ending with a quote; or 1-255 in quotes.
KEY_PATTERN = (
    r'^(?:[\x20-\x7e]|[\x20\x21\x23-\x7e][\x20-\x7e]{1,254}|"[\x20-\x7e]{0,253}[\x20\x21\x23-\x7e]'
    r'|"[\x20-\x7e]{1,255}")$'
)
_KEY = re.compile(r"[\x20-\x7e]{1,255}")

ViewMethod = Callable[..., Response]


def idempotent(view_method: ViewMethod) -> ViewMethod:
    """Make a DRF view method (e.g. a viewset's `create`) honour the Idempotency-Key header."""

    @functools.wraps(view_method)
    def wrapper(view: APIView, request: Request, *args, **kwargs) -> Response:
        raw = request.headers.get(HEADER)
        # Keys are scoped to a client: a view open to anonymous requests runs them without one.
        if raw is None or not request.user.is_authenticated:
            return view_method(view, request, *args, **kwargs)
        key = _parse_key(raw)
        if key is None:
            return _error(
                status.HTTP_400_BAD_REQUEST, f"{HEADER} must be 1 to 255 printable ASCII characters.", "invalid"
            )
        user_id, fingerprint = request.user.pk, _fingerprint(request)
        stored = idempotency_key_stored(user_id=user_id, key=key)
        if stored is None:
            with transaction.atomic():
                ttl = settings.IDEMPOTENCY_KEY_TTL_SECONDS
                claim = idempotency_key_claim(user_id=user_id, key=key, fingerprint=fingerprint, ttl_seconds=ttl)
                if claim is Claim.CLAIMED:
                    return _execute(view_method, view, request, key=key, args=args, kwargs=kwargs)
            # Answered meanwhile by a request that committed (or it expired just now: retry).
            stored = idempotency_key_stored(user_id=user_id, key=key) if claim is Claim.TAKEN else None
            if stored is None:
                return _error(
                    status.HTTP_409_CONFLICT,
                    f"A request with this {HEADER} is still being processed; retry it later.",
                    "in_flight",
                    headers={"Retry-After": IN_FLIGHT_RETRY_AFTER_SECONDS},
                )
        return _replay(stored, fingerprint)

    return wrapper


def _execute(view_method: ViewMethod, view: APIView, request: Request, *, key: str, args, kwargs) -> Response:
    """Run the view inside the claiming transaction and store what it answered (a 5xx: nothing)."""
    try:
        # A savepoint: a refused request stores its answer, never what it wrote before it failed.
        with transaction.atomic():
            response = view_method(view, request, *args, **kwargs)
    except APIException as exc:
        if exc.status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
            raise
        response = view.handle_exception(exc)
    if response.status_code >= status.HTTP_500_INTERNAL_SERVER_ERROR:
        transaction.set_rollback(True)
        return response
    idempotency_key_record(
        user_id=request.user.pk,
        key=key,
        status_code=response.status_code,
        body=response.data,
        location=response.get("Location", ""),
    )
    return response


def _replay(stored: StoredResponse, fingerprint: str) -> Response:
    if stored.fingerprint != fingerprint:
        return _error(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            f"This {HEADER} was already used with a different request; send a new key for a new request.",
            "mismatch",
        )
    headers = {REPLAYED_HEADER: "true"}
    if stored.location:
        headers["Location"] = stored.location
    return Response(stored.body, status=stored.status_code, headers=headers)


def _parse_key(raw: str) -> str | None:
    """The key, without the quotes of the draft's structured-header form; None if malformed."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return raw if _KEY.fullmatch(raw) else None


def _fingerprint(request: Request) -> str:
    """Method, path and the parsed body as canonical JSON: a retry that re-serialises it still matches."""
    data = request.data
    if hasattr(data, "lists"):  # a form's QueryDict: every value of every field
        data = dict(data.lists())
    try:
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    except RecursionError as exc:  # parsed, but too deep to serialise again: nothing worth storing
        raise ParseError("request body nested too deeply") from exc
    return hashlib.sha256(f"{request.method}\n{request.path}\n{body}".encode()).hexdigest()


def _error(code: int, detail: str, reason: str, headers: dict[str, str] | None = None) -> Response:
    return Response({"detail": detail, "code": f"idempotency_key_{reason}"}, status=code, headers=headers)
