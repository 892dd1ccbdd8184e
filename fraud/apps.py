"""App config for fraud; connects the outbox hook."""

from django.apps import AppConfig


class FraudConfig(AppConfig):
    name = "fraud"

    def ready(self) -> None:
        from fraud import signals  # noqa: F401
