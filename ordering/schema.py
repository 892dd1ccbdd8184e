"""The OpenAPI schema's AutoSchema: every operation lists the errors it can really answer with.

A view documents its success and its own errors (e.g. the Idempotency-Key's 409 and 422) with
`extend_schema`. The errors that come from the shared machinery are added here, once, from what
the view is configured with, so they stay true when a view changes and no view repeats them:

- 400: a request body (field errors, or an unparseable body) or a filter (field errors);
- 401: the view requires authentication; 403: CSRF, on unsafe methods with session authentication;
- 404: an object looked up by its path (an unknown id, or one of another shape), a page past the end;
- 406 and 415: content negotiation (an unsatisfiable Accept header; a body of another Content-Type);
- 429: the view has throttles (DRF sets Retry-After);
- 503: every API view: ordering/api.py answers a database outage so, with Retry-After.

tests/test_schema_contract.py holds the API to this schema with schemathesis.
"""

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import permissions, serializers
from rest_framework.authentication import SessionAuthentication

from ordering.api import RETRY_AFTER_SECONDS

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class ErrorSerializer(serializers.Serializer):
    """An error that is not about one field: `detail`, and for some a machine-readable `code`."""

    detail = serializers.CharField()
    code = serializers.CharField(required=False, help_text="Present on errors a client may act upon.")


_VALIDATION_ERRORS = ResolvedComponent(
    name="ValidationErrors",
    type=ResolvedComponent.SCHEMA,
    object="ValidationErrors",
    schema={
        "type": "object",
        "description": "Field errors: each refused field (or `non_field_errors`) with its messages.",
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
)

_RETRY_AFTER = {
    "schema": {"type": "integer", "minimum": 0},
    "description": "Seconds to wait before retrying.",
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema, with the shared error responses and strict request bodies."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        # What a view documents itself wins: it knows its own errors best.
        for code, response in self._shared_error_responses().items():
            responses.setdefault(code, response)
        return dict(sorted(responses.items()))

    def _map_basic_serializer(self, serializer: serializers.Serializer, direction: str) -> dict[str, Any]:
        schema = super()._map_basic_serializer(serializer, direction)
        # A serializer that answers 400 to an unknown field says so, so that clients and
        # negative tests agree with the API on what a valid body is.
        if direction == "request" and getattr(serializer, "refuses_unknown_fields", False):
            schema["additionalProperties"] = False
        return schema

    def _get_filter_parameters(self) -> list[dict[str, Any]]:
        return _empty_means_absent(super()._get_filter_parameters())

    def _get_pagination_parameters(self) -> list[dict[str, Any]]:
        return _empty_means_absent(super()._get_pagination_parameters())

    def _shared_error_responses(self) -> dict[str, dict[str, Any]]:
        error = self.resolve_serializer(ErrorSerializer, "response").ref
        self.registry.register_on_missing(_VALIDATION_ERRORS)
        field_errors = _VALIDATION_ERRORS.ref
        responses = {}
        if self.method in UNSAFE_METHODS and self.get_request_serializer() is not None:
            responses["400"] = self._error(
                {"anyOf": [field_errors, error]},
                "Invalid request: field errors, or `detail` for a body that cannot be parsed.",
            )
        elif self._is_list_view() and self._has_filters():
            responses["400"] = self._error(field_errors, "An invalid filter value: field errors.")
        if self._requires_authentication():
            responses["401"] = self._error(
                error,
                "No credentials, or invalid ones.",
                headers={"WWW-Authenticate": {"schema": {"type": "string"}, "description": "How to authenticate."}},
            )
            if self.method in UNSAFE_METHODS and self._uses_session_authentication():
                responses["403"] = self._error(error, "Session authentication without a valid CSRF token.")
        if self._is_list_view() and self._get_paginator() is not None:
            responses["404"] = self._error(error, "A page that does not exist.")
        elif "{" in self.path:
            responses["404"] = self._error(error, "No such object visible to this client (or an id of another shape).")
        # Content negotiation: every DRF view answers these before it runs.
        responses["406"] = self._error(error, "The Accept header names no media type this API renders.")
        if self.method in UNSAFE_METHODS and self.get_request_serializer() is not None:
            responses["415"] = self._error(error, "A body whose Content-Type is none of the documented ones.")
        if self.view.get_throttles():
            responses["429"] = self._error(
                error, "Too many requests from this client.", headers={"Retry-After": _RETRY_AFTER}
            )
        responses["503"] = self._error(
            error,
            f"The database is briefly unavailable; nothing was stored. Retry after {RETRY_AFTER_SECONDS} s.",
            headers={"Retry-After": {**_RETRY_AFTER, "required": True}},
        )
        return responses

    def _error(self, schema: dict[str, Any], description: str, headers: dict | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {
            "content": {media_type: {"schema": schema} for media_type in self.map_renderers("media_type")},
            "description": description,
        }
        if headers:
            response["headers"] = headers
        return response

    def _requires_authentication(self) -> bool:
        return not all(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions())

    def _uses_session_authentication(self) -> bool:
        return any(isinstance(a, SessionAuthentication) for a in self.view.get_authenticators())

    def _has_filters(self) -> bool:
        return bool(self._get_filter_parameters())


def _empty_means_absent(parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """django-filter skips a filter sent empty (`?status=`, as an HTML form sends it) and DRF's
    paginator reads `?page=` as page 1: the API accepts these empty values, so the schema does."""
    return [
        {**parameter, "allowEmptyValue": True} if parameter.get("in") == "query" else parameter
        for parameter in parameters
    ]
