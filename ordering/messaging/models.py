"""Outbox (events to publish), inbox (events consumed) and the dead-letter view of failed tasks."""

import uuid

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
