"""Replay dead letters: move messages from a DLQ back to the queue they were rejected from.

Safety rules, each with a reason:
- only the messages present when the replay started are looked at, so a message that fails
  again and returns to the DLQ is not replayed a second time in the same run;
- a dead letter is acked only after RabbitMQ confirmed its republish, so an interruption at any
  moment leaves it in the DLQ (at worst it is also back in its queue: consumers are idempotent);
- skipped messages stay unacked until the end of the run and then go back to the DLQ;
- body, headers and properties are kept; the `x-replay-count` header counts replays, and a
  message replayed too often is refused unless forced.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection, Producer
from kombu.message import Message

from ordering import catalogue
from ordering.messaging.topology import dead_letter_queue, declare_topology

logger = logging.getLogger(__name__)

REPLAY_COUNT_HEADER = "x-replay-count"


@dataclass(frozen=True)
class DeadLetterMessage:
    """What an operator needs to know about one message in a DLQ."""

    dlq: str
    origin_queue: str | None
    task_id: str | None
    task_name: str | None
    event_id: str | None
    event_type: str | None
    order_id: str | None
    replay_count: int
    death_reason: str | None

    @classmethod
    def from_message(cls, dlq: str, message: Message) -> "DeadLetterMessage":
        headers = message.headers or {}
        deaths = headers.get("x-death") or []
        # x-death lists the most recent dead-lettering first: that is the consumer queue that
        # rejected it. x-first-death-queue can name a delay queue the retry passed through.
        origin = deaths[0].get("queue") if deaths else None
        envelope = _envelope_of(message.body)
        return cls(
            dlq=dlq,
            origin_queue=origin.decode() if isinstance(origin, bytes) else origin,
            task_id=headers.get("id"),
            task_name=headers.get("task"),
            event_id=envelope.get("event_id"),
            event_type=envelope.get("event_type"),
            order_id=envelope.get("aggregate_id"),
            replay_count=int(headers.get(REPLAY_COUNT_HEADER) or 0),
            death_reason=deaths[0].get("reason") if deaths else None,
        )


@dataclass
class ReplayCriteria:
    queues: tuple[str, ...] = catalogue.CONSUMER_QUEUES
    event_type: str | None = None
    order_id: str | None = None
    limit: int | None = None
    dry_run: bool = False
    reset_retries: bool = False
    force: bool = False
    max_replays: int = 3


@dataclass
class ReplaySummary:
    replayed: list[DeadLetterMessage] = field(default_factory=list)
    skipped: list[tuple[DeadLetterMessage, str]] = field(default_factory=list)
    failed: list[tuple[DeadLetterMessage, str]] = field(default_factory=list)


Reporter = Callable[[str, DeadLetterMessage, str], None]


def replay_dead_letters(
    connection: Connection, criteria: ReplayCriteria, report: Reporter | None = None
) -> ReplaySummary:
    """Replay the dead letters matching `criteria`; `report(action, letter, why)` per message."""
    report = report or (lambda action, letter, why: None)
    summary = ReplaySummary()
    declare_topology(connection)
    for queue in criteria.queues:
        if criteria.limit is not None and len(summary.replayed) >= criteria.limit:
            break
        _replay_queue(connection, queue, criteria, summary, report)
    return summary


def _replay_queue(
    connection: Connection,
    queue: str,
    criteria: ReplayCriteria,
    summary: ReplaySummary,
    report: Reporter,
) -> None:
    channel = connection.channel()
    try:
        dlq = dead_letter_queue(queue).bind(channel)
        _, present, _ = dlq.queue_declare(passive=True)
        producer = Producer(channel)
        for _ in range(present):
            if criteria.limit is not None and len(summary.replayed) >= criteria.limit:
                break
            message = dlq.get(no_ack=False, accept=None)
            if message is None:
                break
            letter = DeadLetterMessage.from_message(dlq.name, message)
            why_not = _reason_to_skip(letter, criteria)
            if why_not:
                summary.skipped.append((letter, why_not))
                report("skipped", letter, why_not)
                continue  # left unacked: back in the DLQ when the channel closes
            if criteria.dry_run:
                summary.replayed.append(letter)
                report("would replay", letter, "")
                continue
            try:
                _republish(producer, message, letter, criteria)
            except Exception as exc:  # the dead letter stays where it is
                summary.failed.append((letter, f"{type(exc).__name__}: {exc}"))
                report("failed", letter, str(exc))
                continue
            message.ack()
            summary.replayed.append(letter)
            report("replayed", letter, "")
    finally:
        # Closing returns every unacked (skipped or dry-run) message to the DLQ.
        channel.close()


def _reason_to_skip(letter: DeadLetterMessage, criteria: ReplayCriteria) -> str:
    if letter.origin_queue is None:
        return "no x-death header: origin queue unknown"
    if letter.origin_queue not in catalogue.CONSUMER_QUEUES:
        return f"origin queue {letter.origin_queue!r} is not a consumer queue"
    if criteria.event_type and letter.event_type != criteria.event_type:
        return "other event type"
    if criteria.order_id and letter.order_id != criteria.order_id:
        return "other order"
    if letter.replay_count >= criteria.max_replays and not criteria.force:
        return f"replayed {letter.replay_count} times already (use --force)"
    return ""


def _republish(producer: Producer, message: Message, letter: DeadLetterMessage, criteria: ReplayCriteria) -> None:
    headers = dict(message.headers or {})
    headers[REPLAY_COUNT_HEADER] = letter.replay_count + 1
    if criteria.reset_retries:
        headers["retries"] = 0
    properties = {
        key: value
        for key, value in (message.properties or {}).items()
        if key not in ("application_headers", "content_type", "content_encoding")
    }
    # The default exchange routes straight to the queue named by the routing key: the message
    # goes back to exactly the queue that rejected it. publish() waits for the broker's confirm.
    producer.publish(
        message.body,
        exchange="",
        routing_key=letter.origin_queue,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        # If the queue is gone the broker returns the message (py-amqp raises) instead of
        # confirming and dropping it, and the dead letter is not acked.
        mandatory=True,
        retry=False,
        **properties,
    )


def _envelope_of(body: Any) -> dict[str, Any]:
    """The envelope inside a Celery protocol-2 body ([args, kwargs, embed]), or {} if none."""
    try:
        decoded = json.loads(body) if isinstance(body, (bytes, str)) else body
        envelope = decoded[1]["envelope"]
    except (ValueError, TypeError, KeyError, IndexError):
        return {}
    return envelope if isinstance(envelope, dict) else {}


def peek_dead_letters(connection: Connection, queues: Iterable[str]) -> list[DeadLetterMessage]:
    """List the dead letters in the DLQs without moving any (a dry run that replays nothing)."""
    summary = replay_dead_letters(connection, ReplayCriteria(queues=tuple(queues), dry_run=True, force=True))
    return summary.replayed + [letter for letter, _ in summary.skipped]
