"""Metrics of the messaging machinery: the relay, the consumers, dead letters, replays, the outbox.

The machinery counts through the functions here; nothing else touches these objects. Labels are
bounded: event types, task names and queues come from the catalogue, outcomes are fixed words,
exception types are the classes the code raises. Each update is one write to this process's
memory-mapped file: cheap enough for every message.
"""

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ordering.metrics import SECONDS_BUCKETS

EVENTS_PUBLISHED = Counter(
    "ordering_events_published",
    "Events the outbox relay published (every subscriber's message confirmed by RabbitMQ), by event type.",
    ["event_type"],
)
CONSUMER_MESSAGES = Counter(
    "ordering_consumer_messages",
    "Messages the consumer machinery finished with, by task and outcome: handled (effect applied), duplicate "
    "(seen before: no effect), retried (a new delayed message), dead_lettered (rejected to the DLQ).",
    ["task", "outcome"],
)
CONSUMER_BATCH_SECONDS = Histogram(
    "ordering_consumer_batch_duration_seconds",
    "Time a pool process spent on one batch of a consumer task, retries and failures included.",
    ["task"],
    buckets=SECONDS_BUCKETS,
)
CONSUMER_BATCHES_IN_PROGRESS = Gauge(
    "ordering_consumer_batches_in_progress",
    "Batches being handled right now, by task (processes that died are not counted).",
    ["task"],
    multiprocess_mode="livesum",
)
DEAD_LETTERS = Counter(
    "ordering_dead_letters",
    "Messages rejected to a dead-letter queue, by the queue they were consumed from and exception type.",
    ["queue", "exception"],
)
REPLAYS = Counter(
    "ordering_dead_letter_replays",
    "Dead letters looked at by replay_dead_letters (not dry runs), by outcome: replayed, skipped, failed.",
    ["outcome"],
)

HANDLED, DUPLICATE, RETRIED, DEAD_LETTERED = "handled", "duplicate", "retried", "dead_lettered"


def events_published_count(*, event_types: list[str]) -> None:
    """The relay's batch of events is confirmed and its mark committed."""
    for event_type in event_types:
        EVENTS_PUBLISHED.labels(event_type).inc()


def consumer_messages_count(*, task: str, outcome: str, count: int = 1) -> None:
    if count:
        CONSUMER_MESSAGES.labels(task, outcome).inc(count)


def consumer_batch_observe(*, task: str, seconds: float) -> None:
    CONSUMER_BATCH_SECONDS.labels(task).observe(seconds)


def consumer_batches_in_progress(*, task: str) -> Gauge:
    """The gauge of `task`'s batches in progress: `with consumer_batches_in_progress(task=...).track_inprogress():`."""
    return CONSUMER_BATCHES_IN_PROGRESS.labels(task)


def dead_letter_count(*, queue: str, exception: BaseException | str) -> None:
    name = exception if isinstance(exception, str) else type(exception).__name__
    DEAD_LETTERS.labels(queue, name).inc()


def replay_count(*, replayed: int, skipped: int, failed: int) -> None:
    """One replay_dead_letters run is over (every outcome, zeros included, so each series exists)."""
    REPLAYS.labels("replayed").inc(replayed)
    REPLAYS.labels("skipped").inc(skipped)
    REPLAYS.labels("failed").inc(failed)


class OutboxCollector(Collector):
    """Scrape time, web only: events committed and not yet published, and how long the oldest has waited."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from ordering.messaging.selectors import outbox_unpublished

        unpublished = outbox_unpublished()
        yield GaugeMetricFamily(
            "ordering_outbox_backlog", "Outbox events committed and not yet published.", value=unpublished.count
        )
        yield GaugeMetricFamily(
            "ordering_outbox_oldest_unpublished_age_seconds",
            "How long the oldest unpublished outbox event has waited (0 when none waits).",
            value=unpublished.oldest_age_seconds,
        )
