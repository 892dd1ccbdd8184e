"""Replay dead letters: move messages from a DLQ back to the queue they were rejected from.

Safety rules, each with a reason:
- only the messages present when the replay started are looked at, so a message that fails
  again and returns to the DLQ is not replayed a second time in the same run;
- a dead letter is acked only after RabbitMQ confirmed its republish, so an interruption at any
  moment leaves it in the DLQ (at worst it is also back in its queue: consumers are idempotent);
  dead letters go back in batches with one wait for the broker's confirms, and a batch that
  fails goes again one message at a time, so each dead letter's outcome is its own;
- skipped messages stay unacked until the end of the run and then go back to the DLQ;
- body, headers and properties are kept; the `x-replay-count` header counts replays, and a
  message replayed too often is refused unless forced.

Discarding takes the matching dead letters out of their DLQ without republishing them (an operator
decided they are not to be processed); each is acked only when it matched, so the others stay.

`dead_letters_replay` and `dead_letters_discard` are what the command and the admin call: they
connect with MESSAGING["REPLAY_BROKER_URL"] and record every use (DeadLetterAction).
"""

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from kombu import Connection
from kombu.message import Message

from ordering import catalogue
from ordering.messaging import metrics
from ordering.messaging.broker import connect
from ordering.messaging.models import DeadLetter, DeadLetterAction, DeadLetterOutcome
from ordering.messaging.publisher import (
    ConfirmedPublisher,
    OutgoingMessage,
    PublishFailed,
    connection_for_confirmed_batches,
)
from ordering.messaging.topology import dead_letter_queue, ensure_topology

logger = logging.getLogger(__name__)

REPLAY_COUNT_HEADER = "x-replay-count"
# Dead letters republished before one wait for the broker's confirms.
REPLAY_BATCH_SIZE = 200


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
    # Why its headers cannot be trusted (then it is skipped, never replayed), or "".
    problem: str = ""

    @classmethod
    def from_message(cls, dlq: str, message: Message) -> "DeadLetterMessage":
        headers = message.headers if isinstance(message.headers, dict) else {}
        # x-death lists the most recent dead-lettering first: that is the consumer queue that
        # rejected it. x-first-death-queue can name a delay queue the retry passed through.
        latest, death_problem = _latest_death(headers.get("x-death"))
        replay_count, count_problem = _replay_count(headers.get(REPLAY_COUNT_HEADER))
        envelope = _envelope_of(message.body)
        return cls(
            dlq=dlq,
            origin_queue=_text(latest.get("queue")),
            task_id=_text(headers.get("id")),
            task_name=_text(headers.get("task")),
            event_id=_text(envelope.get("event_id")),
            event_type=_text(envelope.get("event_type")),
            order_id=_text(envelope.get("aggregate_id")),
            replay_count=replay_count,
            death_reason=_text(latest.get("reason")),
            problem="; ".join(p for p in (death_problem, count_problem) if p),
        )


def _latest_death(deaths: object) -> tuple[dict[str, Any], str]:
    if deaths is None:
        return {}, ""
    if not isinstance(deaths, list | tuple) or not deaths or not isinstance(deaths[0], dict):
        return {}, f"malformed x-death header: {deaths!r:.80}"
    return deaths[0], ""


def _replay_count(value: object) -> tuple[int, str]:
    """The replay count; a negative one counts as 0, a non-numeric one is a problem."""
    if value is None or value == "":
        return 0, ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        if isinstance(value, bool):
            raise TypeError
        return max(int(value), 0), ""
    except (TypeError, ValueError, OverflowError):
        return 0, f"{REPLAY_COUNT_HEADER} is not a number: {value!r:.40}"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass
class ReplayCriteria:
    queues: tuple[str, ...] = catalogue.CONSUMER_QUEUES
    event_type: str | None = None
    order_id: str | None = None
    # Only these messages (the `id` header: Celery's task id, the dead letter's TaskResult.task_id).
    task_ids: frozenset[str] | None = None
    limit: int | None = None
    dry_run: bool = False
    reset_retries: bool = False
    force: bool = False
    max_replays: int = field(default_factory=lambda: settings.MESSAGING["REPLAY_MAX_REPLAYS"])


@dataclass
class ReplaySummary:
    replayed: list[DeadLetterMessage] = field(default_factory=list)
    skipped: list[tuple[DeadLetterMessage, str]] = field(default_factory=list)
    failed: list[tuple[DeadLetterMessage, str]] = field(default_factory=list)
    discarded: list[DeadLetterMessage] = field(default_factory=list)


Reporter = Callable[[str, DeadLetterMessage, str], None]


def replay_dead_letters(
    connection: Connection, criteria: ReplayCriteria, report: Reporter | None = None
) -> ReplaySummary:
    """Replay the dead letters matching `criteria`; `report(action, letter, why)` per message."""
    summary = _each_queue(connection, criteria, report, _replay_queue)
    if not criteria.dry_run:
        metrics.replay_count(replayed=len(summary.replayed), skipped=len(summary.skipped), failed=len(summary.failed))
    return summary


def discard_dead_letters(
    connection: Connection, criteria: ReplayCriteria, report: Reporter | None = None
) -> ReplaySummary:
    """Take the dead letters matching `criteria` out of their DLQ without republishing them."""
    return _each_queue(connection, criteria, report, _discard_queue)


def _each_queue(
    connection: Connection,
    criteria: ReplayCriteria,
    report: Reporter | None,
    handle_queue: Callable[[Connection, str, ReplayCriteria, ReplaySummary, Reporter], None],
) -> ReplaySummary:
    report = report or (lambda action, letter, why: None)
    summary = ReplaySummary()
    # Declared, or only checked for a least-privilege user (MESSAGING["DECLARE_TOPOLOGY"]).
    ensure_topology(connection)
    for queue in criteria.queues:
        if criteria.limit is not None and len(summary.replayed) + len(summary.discarded) >= criteria.limit:
            break
        handle_queue(connection, queue, criteria, summary, report)
    return summary


def _discard_queue(
    connection: Connection,
    queue: str,
    criteria: ReplayCriteria,
    summary: ReplaySummary,
    report: Reporter,
) -> None:
    channel = connection.channel()
    try:
        for message, letter in _dead_letters(channel, queue, criteria, summary, taken=lambda: len(summary.discarded)):
            # A malformed message may be discarded (that is often why): only the filters apply.
            why_not = _not_selected(letter, criteria)
            if why_not:
                continue  # not one of the letters asked for: left unacked, back in the DLQ at the end
            if criteria.dry_run:
                summary.discarded.append(letter)
                report("would discard", letter, "")
                continue
            message.ack()
            summary.discarded.append(letter)
            report("discarded", letter, "")
    finally:
        _close_when_settled(channel, queue)


def _dead_letters(
    channel: Any,
    queue: str,
    criteria: ReplayCriteria,
    summary: ReplaySummary,
    *,
    taken: Callable[[], int],
    pending: Callable[[], Iterable[DeadLetterMessage]] = tuple,
) -> Iterator[tuple[Message, DeadLetterMessage]]:
    """The messages of `queue`'s DLQ present now, unacked, each with what its headers say.

    Stops at the criteria's limit (`taken()` of them taken so far), once every task id asked for
    was found, or when the DLQ is empty.
    """
    dlq = dead_letter_queue(queue).bind(channel)
    _, present, _ = dlq.queue_declare(passive=True)
    for _ in range(present):
        if criteria.limit is not None and taken() >= criteria.limit:
            return
        if _all_found(criteria, summary, pending()):
            return
        message = dlq.get(no_ack=False, accept=None)
        if message is None:
            return
        yield message, DeadLetterMessage.from_message(dlq.name, message)


def _all_found(criteria: ReplayCriteria, summary: ReplaySummary, pending: Iterable[DeadLetterMessage] = ()) -> bool:
    """With task ids asked for, every one of them has been taken: the rest of the DLQ need not be read."""
    if criteria.task_ids is None:
        return False
    taken = [*summary.replayed, *summary.discarded, *(letter for letter, _ in (*summary.skipped, *summary.failed))]
    return criteria.task_ids <= {letter.task_id for letter in (*taken, *pending)}


def _replay_queue(
    connection: Connection,
    queue: str,
    criteria: ReplayCriteria,
    summary: ReplaySummary,
    report: Reporter,
) -> None:
    channel = connection.channel()
    publisher = ConfirmedPublisher(connection, confirm_timeout=settings.MESSAGING["RELAY_CONFIRM_TIMEOUT_SECONDS"])
    try:
        batch: list[tuple[Message, DeadLetterMessage]] = []
        letters = _dead_letters(
            channel,
            queue,
            criteria,
            summary,
            taken=lambda: len(summary.replayed) + len(batch),
            pending=lambda: (letter for _, letter in batch),
        )
        for message, letter in letters:
            if criteria.task_ids is not None and letter.task_id not in criteria.task_ids:
                continue  # not asked for, not reported: left unacked, back in the DLQ at the end
            why_not = _reason_to_skip(letter, criteria)
            if why_not:
                summary.skipped.append((letter, why_not))
                report("skipped", letter, why_not)
                continue  # left unacked: back in the DLQ when the channel closes
            if criteria.dry_run:
                summary.replayed.append(letter)
                report("would replay", letter, "")
                continue
            batch.append((message, letter))
            if len(batch) >= REPLAY_BATCH_SIZE:
                _replay_batch(publisher, batch, criteria, summary, report)
                batch = []
        _replay_batch(publisher, batch, criteria, summary, report)
    finally:
        publisher.close()
        # Closing returns every unacked (skipped, dry-run or failed) message to the DLQ.
        _close_when_settled(channel, queue)


def _close_when_settled(channel: Any, queue: str) -> None:
    """Close `channel` once the DLQ has applied every ack sent on it.

    A quorum queue applies acks asynchronously: a channel closed right after a hundred of them
    returns the letters whose acks were still on their way (a replayed letter would be back in
    the DLQ, and replayed again). The queue answers a basic.get only after applying what the
    same channel sent before it; what that get takes goes back with the other unacked letters.
    """
    with contextlib.suppress(Exception):  # a broken channel has nothing left to settle
        dead_letter_queue(queue).bind(channel).get(no_ack=False, accept=None)
    channel.close()


def _replay_batch(
    publisher: ConfirmedPublisher,
    batch: list[tuple[Message, DeadLetterMessage]],
    criteria: ReplayCriteria,
    summary: ReplaySummary,
    report: Reporter,
) -> None:
    """Republish `batch`, wait for the broker's confirms once, then ack each dead letter.

    If the batch fails, its messages go one at a time, so that each one's outcome is known: a
    dead letter is acked only when its own republish was confirmed.
    """
    if not batch:
        return
    outgoing = [_replayed(message, letter, criteria) for message, letter in batch]
    try:
        _publish(publisher, outgoing)
    except PublishFailed as exc:
        if exc.returned is None:
            raise
        # Only unroutable messages failed (their queue is gone); the broker confirmed the rest.
        for position, (message, letter) in enumerate(batch):
            if position in exc.returned:
                summary.failed.append((letter, f"returned: no queue {letter.origin_queue!r}"))
                report("failed", letter, f"returned: no queue {letter.origin_queue!r}")
            else:
                _acked(message, letter, summary, report)
        return
    except Exception:
        for (message, letter), replayed in zip(batch, outgoing, strict=True):
            try:
                _publish(publisher, [replayed])
            except Exception as exc:  # the dead letter stays where it is
                summary.failed.append((letter, f"{type(exc).__name__}: {exc}"))
                report("failed", letter, str(exc))
                continue
            _acked(message, letter, summary, report)
        return
    for message, letter in batch:
        _acked(message, letter, summary, report)


def _acked(message: Message, letter: DeadLetterMessage, summary: ReplaySummary, report: Reporter) -> None:
    message.ack()
    summary.replayed.append(letter)
    report("replayed", letter, "")


def _publish(publisher: ConfirmedPublisher, messages: list[OutgoingMessage]) -> None:
    publisher.publish(messages)


def _reason_to_skip(letter: DeadLetterMessage, criteria: ReplayCriteria) -> str:
    if letter.problem or letter.origin_queue is None:
        return letter.problem or "no x-death header: origin queue unknown"
    if letter.origin_queue not in catalogue.CONSUMER_QUEUES:
        return f"origin queue {letter.origin_queue!r} is not a consumer queue"
    not_selected = _not_selected(letter, criteria)
    if not_selected:
        return not_selected
    if letter.replay_count >= criteria.max_replays and not criteria.force:
        return f"replayed {letter.replay_count} times already (use --force)"
    # Past the inbox's retention its consumer may have forgotten it handled this event (or a copy
    # of it): a replay could apply it twice. Dated by its failure record (a dead letter without
    # one, e.g. from a lost worker, has no known age and goes back).
    failed_at = DeadLetter.objects.filter(task_id=letter.task_id).values_list("date_done", flat=True).first()
    age = timezone.now() - failed_at if failed_at else timedelta(0)
    too_old = age > timedelta(days=settings.RETENTION["INBOX_DAYS"]) and not criteria.force
    return f"failed {age.days} days ago, past the inbox's retention (use --force)" if too_old else ""


OTHER_TASK, OTHER_EVENT_TYPE, OTHER_ORDER = "other task", "other event type", "other order"
# Reasons that mean "not one of the letters asked for", rather than "asked for, but left alone".
NOT_SELECTED = frozenset({OTHER_TASK, OTHER_EVENT_TYPE, OTHER_ORDER})


def _not_selected(letter: DeadLetterMessage, criteria: ReplayCriteria) -> str:
    if criteria.task_ids is not None and letter.task_id not in criteria.task_ids:
        return OTHER_TASK
    if criteria.event_type and letter.event_type != criteria.event_type:
        return OTHER_EVENT_TYPE
    if criteria.order_id and letter.order_id != criteria.order_id:
        return OTHER_ORDER
    return ""


def _replayed(message: Message, letter: DeadLetterMessage, criteria: ReplayCriteria) -> OutgoingMessage:
    """The dead letter as it goes back: same body, headers and properties, replay counted."""
    headers = dict(message.headers or {})
    headers[REPLAY_COUNT_HEADER] = letter.replay_count + 1
    if criteria.reset_retries:
        headers["retries"] = 0
    properties = {
        key: value for key, value in (message.properties or {}).items() if key not in ("application_headers",)
    }
    properties.setdefault("delivery_mode", 2)
    body = message.body
    if isinstance(body, str):
        body = body.encode(message.content_encoding or "utf-8")
    # The default exchange routes straight to the queue named by the routing key: the message
    # goes back to exactly the queue that rejected it. Mandatory (the publisher's rule): if the
    # queue is gone the broker returns the message instead of confirming and dropping it.
    return OutgoingMessage(
        exchange="", routing_key=letter.origin_queue, body=body, headers=headers, properties=properties
    )


def _envelope_of(body: Any) -> dict[str, Any]:
    """The envelope inside a Celery protocol-2 body ([args, kwargs, embed]), or {} if none."""
    try:
        decoded = json.loads(body) if isinstance(body, (bytes, str)) else body
        envelope = decoded[1]["envelope"]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return {}
    return envelope if isinstance(envelope, dict) else {}


def peek_dead_letters(connection: Connection, queues: Iterable[str]) -> list[DeadLetterMessage]:
    """List the dead letters in the DLQs without moving any (a dry run that replays nothing)."""
    summary = replay_dead_letters(connection, ReplayCriteria(queues=tuple(queues), dry_run=True, force=True))
    return summary.replayed + [letter for letter, _ in summary.skipped]


@contextlib.contextmanager
def replay_connection() -> Iterator[Connection]:
    """A connection for replay and discard: MESSAGING["REPLAY_BROKER_URL"], with batch confirms."""
    from ordering.celery import app

    url = settings.MESSAGING["REPLAY_BROKER_URL"] or None
    with connection_for_confirmed_batches(app, url=url) as connection:
        connect(connection, rounds=3)
        yield connection


def dead_letters_replay(
    *,
    criteria: ReplayCriteria,
    actor: str,
    user: AbstractBaseUser | None = None,
    reason: str = "",
    report: Reporter | None = None,
) -> tuple[ReplaySummary, DeadLetterAction | None]:
    """Replay the dead letters matching `criteria` and record who did it and what came of it.

    A dry run changes nothing and is not recorded (the action is then None).
    """
    return _audited(
        replay_dead_letters,
        DeadLetterAction.Kind.REPLAY,
        criteria=criteria,
        actor=actor,
        user=user,
        reason=reason,
        report=report,
    )


def dead_letters_discard(
    *,
    criteria: ReplayCriteria,
    actor: str,
    reason: str,
    user: AbstractBaseUser | None = None,
    report: Reporter | None = None,
) -> tuple[ReplaySummary, DeadLetterAction | None]:
    """Remove the dead letters matching `criteria` from their DLQ for good, with the reason, recorded."""
    if not reason.strip():
        raise ValueError("a discard needs a reason")
    return _audited(
        discard_dead_letters,
        DeadLetterAction.Kind.DISCARD,
        criteria=criteria,
        actor=actor,
        user=user,
        reason=reason,
        report=report,
    )


_RESULTS = {
    "replayed": DeadLetterOutcome.Result.REPLAYED,
    "discarded": DeadLetterOutcome.Result.DISCARDED,
    "skipped": DeadLetterOutcome.Result.SKIPPED,
    "failed": DeadLetterOutcome.Result.FAILED,
}


def _audited(
    operation: Callable[[Connection, ReplayCriteria, Reporter | None], ReplaySummary],
    kind: str,
    *,
    criteria: ReplayCriteria,
    actor: str,
    user: AbstractBaseUser | None,
    reason: str,
    report: Reporter | None,
) -> tuple[ReplaySummary, DeadLetterAction | None]:
    reports: list[tuple[str, DeadLetterMessage, str]] = []

    def collect(action: str, letter: DeadLetterMessage, why: str) -> None:
        reports.append((action, letter, why))
        if report:
            report(action, letter, why)

    summary = ReplaySummary()
    error = ""
    try:
        with replay_connection() as connection:
            summary = operation(connection, criteria, collect)
    except Exception as exc:
        # Recorded too: what was done before the failure stays done (each letter acked on its own).
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        action = None
        if not criteria.dry_run:
            action = _record(
                kind, criteria=criteria, actor=actor, user=user, reason=reason, reports=reports, error=error
            )
    return summary, action


def _record(
    kind: str,
    *,
    criteria: ReplayCriteria,
    actor: str,
    user: AbstractBaseUser | None,
    reason: str,
    reports: list[tuple[str, DeadLetterMessage, str]],
    error: str,
) -> DeadLetterAction:
    # Letters that were not asked for (another order, task or event type) are not part of the record.
    outcomes = [
        (_RESULTS[action], letter, why)
        for action, letter, why in reports
        if action in _RESULTS and not (action == "skipped" and why in NOT_SELECTED)
    ]
    counts = {result: sum(1 for r, _, _ in outcomes if r == result) for result in DeadLetterOutcome.Result}
    with transaction.atomic():
        action = DeadLetterAction.objects.create(
            user=user if user is not None and user.pk else None,
            actor=actor,
            action=kind,
            reason=reason,
            criteria=_criteria_record(criteria),
            replayed=counts[DeadLetterOutcome.Result.REPLAYED],
            discarded=counts[DeadLetterOutcome.Result.DISCARDED],
            skipped=counts[DeadLetterOutcome.Result.SKIPPED],
            failed=counts[DeadLetterOutcome.Result.FAILED],
            error=error,
        )
        DeadLetterOutcome.objects.bulk_create(
            DeadLetterOutcome(
                action=action,
                task_id=letter.task_id or "",
                order_id=letter.order_id or "",
                queue=letter.origin_queue or "",
                event_type=letter.event_type or "",
                result=result,
                detail=why,
            )
            for result, letter, why in outcomes
        )
    return action


def _criteria_record(criteria: ReplayCriteria) -> dict[str, Any]:
    record = {
        "queues": list(criteria.queues),
        "event_type": criteria.event_type,
        "order_id": criteria.order_id,
        "task_ids": sorted(criteria.task_ids) if criteria.task_ids is not None else None,
        "limit": criteria.limit,
        "reset_retries": criteria.reset_retries,
        "force": criteria.force,
        "max_replays": criteria.max_replays,
    }
    return {key: value for key, value in record.items() if value not in (None, False)}
