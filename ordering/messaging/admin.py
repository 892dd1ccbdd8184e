"""Admin for operators: the outbox, the inbox and the dead letters with their failure details."""

import json

from django.contrib import admin
from django.utils.html import format_html

from ordering.messaging import selectors
from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    """These tables are written by the system only; operators look, they do not edit."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "event_type", "version", "aggregate_id", "occurred_at", "published_at", "publish_attempts"]
    list_filter = ["event_type", ("published_at", admin.EmptyFieldListFilter)]
    search_fields = ["=id", "=aggregate_id", "correlation_id"]
    date_hierarchy = "occurred_at"


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "consumer", "event_type", "aggregate_id", "processed_at"]
    list_filter = ["consumer", "event_type"]
    search_fields = ["=event_id", "=aggregate_id"]


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Failures that sent a message to a dead-letter queue; replay with `manage.py replay_dead_letters`."""

    list_display = ["date_done", "task_name", "event_type", "order", "failure", "attempts", "queue", "resolved"]
    list_filter = ["task_name", "date_done"]
    search_fields = ["task_id", "task_kwargs", "meta"]
    fields = [
        "task_id",
        "task_name",
        "event_type",
        "order",
        "queue",
        "attempts",
        "failure",
        "resolved",
        "worker",
        "date_done",
        "traceback",
        "envelope",
    ]
    readonly_fields = fields

    @admin.display(description="event type")
    def event_type(self, obj: DeadLetter) -> str:
        return self._envelope(obj).get("event_type", "")

    @admin.display(description="order")
    def order(self, obj: DeadLetter) -> str:
        return self._envelope(obj).get("aggregate_id", "")

    @admin.display(description="failure")
    def failure(self, obj: DeadLetter) -> str:
        return selectors.failure_summary(obj)

    @admin.display(description="attempts")
    def attempts(self, obj: DeadLetter) -> int | None:
        return selectors.failure_attempts(obj)

    @admin.display(description="queue")
    def queue(self, obj: DeadLetter) -> str:
        return selectors.failure_meta(obj).get("queue") or ""

    @admin.display(description="resolved", boolean=True)
    def resolved(self, obj: DeadLetter) -> bool:
        return selectors.dead_letter_resolved(obj)

    @admin.display(description="envelope")
    def envelope(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(self._envelope(obj), indent=2))

    def _envelope(self, obj: DeadLetter) -> dict:
        return selectors.dead_letter_envelope(obj) or {}
