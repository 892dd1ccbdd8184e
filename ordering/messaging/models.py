"""Outbox (events to publish), inbox (events consumed) and the dead-letter view of failed tasks."""

import json
import uuid

from django.conf import settings
from django.db import models
from django_celery_results.models import TaskResult

from ordering.messaging.envelope import Envelope


class OutboxEvent(models.Model):
    """An event written in the same transaction as the change that caused it.

    The relay publishes it and sets `published_at` only after RabbitMQ confirmed every message.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=100)
    version = models.PositiveSmallIntegerField()
    aggregate_id = models.CharField(max_length=64, db_index=True)
    correlation_id = models.CharField(max_length=100, blank=True)
    causation_id = models.UUIDField(null=True, blank=True)
    payload = models.JSONField()
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    # Times published: more than 1 when a relay died between the broker's confirm and this mark.
    publish_attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=models.Q(published_at__isnull=True),
                name="outbox_unpublished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} v{self.version} {self.id}"

    def envelope(self) -> Envelope:
        return Envelope(
            event_id=self.id,
            event_type=self.event_type,
            version=self.version,
            occurred_at=self.occurred_at,
            aggregate_id=self.aggregate_id,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            payload=self.payload,
        )


class ProcessedEvent(models.Model):
    """Inbox: one row per (consumer, event) handled, written in the transaction of its effect."""

    consumer = models.CharField(max_length=100)
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=100)
    aggregate_id = models.CharField(max_length=64, db_index=True)
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["processed_at"]
        constraints = [
            models.UniqueConstraint(fields=["consumer", "event_id"], name="inbox_once_per_consumer"),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} {self.event_type} {self.event_id}"


class DeadLetterManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(status="FAILURE")


class DeadLetter(TaskResult):
    """A consumer task that failed for good, as django-celery-results recorded it.

    The message itself waits in the queue's dead-letter queue; this row carries what the DLX
    rejection does not: exception, traceback, attempts, worker and time.
    """

    objects = DeadLetterManager()

    class Meta:
        proxy = True
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"
        permissions = [
            ("replay_deadletter", "Can replay dead letters to their queue"),
            ("discard_deadletter", "Can discard dead letters from their DLQ"),
        ]

    def __str__(self) -> str:
        # The admin's title of the page and its history: the task, the order and when (not a uuid).
        try:
            meta = json.loads(self.meta or "{}")
            order_id = meta.get("envelope", {}).get("aggregate_id") if isinstance(meta, dict) else None
        except (ValueError, AttributeError):
            order_id = None
        when = f"{self.date_done:%Y-%m-%d %H:%M}" if self.date_done else "?"
        return f"{self.task_name or 'unknown task'} for order {order_id or '?'}, failed {when}"


class DeadLetterAction(models.Model):
    """Audit: one use of replay or discard (admin or command): who, when, why, and the outcome."""

    class Kind(models.TextChoices):
        REPLAY = "replay", "replay"
        DISCARD = "discard", "discard"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # Kept as text too: the record outlives the account, and the command line has no user row.
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=10, choices=Kind.choices)
    reason = models.TextField(blank=True)
    # What was asked for (the criteria), as given: task ids, queues, order, event type.
    criteria = models.JSONField(default=dict)
    replayed = models.PositiveIntegerField(default=0)
    discarded = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Set when the action could not run to its end (e.g. the broker refused the connection).
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = "dead-letter action (audit)"
        verbose_name_plural = "dead-letter actions (audit)"

    def __str__(self) -> str:
        return f"{self.action} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S}"


class DeadLetterOutcome(models.Model):
    """What one action did to one dead letter: replayed, discarded, skipped (why) or failed (why)."""

    class Result(models.TextChoices):
        REPLAYED = "replayed", "replayed"
        DISCARDED = "discarded", "discarded"
        SKIPPED = "skipped", "skipped"
        FAILED = "failed", "failed"

    action = models.ForeignKey(DeadLetterAction, on_delete=models.CASCADE, related_name="outcomes")
    task_id = models.CharField(max_length=255, db_index=True)
    order_id = models.CharField(max_length=64, blank=True, db_index=True)
    queue = models.CharField(max_length=100, blank=True)
    event_type = models.CharField(max_length=100, blank=True)
    result = models.CharField(max_length=10, choices=Result.choices)
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.task_id} {self.result}"
