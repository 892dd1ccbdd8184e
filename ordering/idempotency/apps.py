"""App config for API idempotency keys (plumbing: imports no domain app)."""

from django.apps import AppConfig


class IdempotencyConfig(AppConfig):
    name = "ordering.idempotency"
    label = "idempotency"
    verbose_name = "API idempotency keys"
