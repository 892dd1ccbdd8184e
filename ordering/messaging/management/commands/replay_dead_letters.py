"""Put dead letters back on the queue they came from."""

import getpass
import json
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ordering import catalogue
from ordering.messaging.replay import DeadLetterMessage, ReplayCriteria, dead_letters_replay
from ordering.messaging.selectors import dead_letter_failures


class Command(BaseCommand):
    help = (
        "Replay messages from the dead-letter queues to the queue that rejected them. Handles only "
        "the messages present at start; acks each only after the broker confirmed its republish."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--queue",
            action="append",
            choices=catalogue.CONSUMER_QUEUES,
            help="consumer queue whose DLQ to replay (repeatable; default: all)",
        )
        parser.add_argument("--event-type", help="only events of this type, e.g. orders.order.created")
        parser.add_argument("--order", help="only events of this order id")
        parser.add_argument("--limit", type=int, help="replay at most this many messages")
        parser.add_argument(
            "--dry-run", action="store_true", help="show what would be replayed and why each failed; move nothing"
        )
        parser.add_argument("--json", action="store_true", help="print the dead letters and counts as JSON")
        parser.add_argument("--reason", default="", help="why, for the audit record (Messaging > dead-letter actions)")
        parser.add_argument("--reset-retries", action="store_true", help="give each task its full retry budget back")
        parser.add_argument("--force", action="store_true", help="replay even messages replayed too often already")
        parser.add_argument(
            "--max-replays",
            type=int,
            default=settings.MESSAGING["REPLAY_MAX_REPLAYS"],
            help="refuse messages already replayed this many times (default: %(default)s)",
        )

    def handle(self, *args, **options) -> None:
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        criteria = ReplayCriteria(
            queues=tuple(options["queue"] or catalogue.CONSUMER_QUEUES),
            event_type=options["event_type"],
            order_id=options["order"],
            limit=options["limit"],
            dry_run=options["dry_run"],
            reset_retries=options["reset_retries"],
            force=options["force"],
            max_replays=options["max_replays"],
        )
        reports: list[tuple[str, DeadLetterMessage, str]] = []
        summary, _ = dead_letters_replay(
            criteria=criteria, actor=_command_actor(), reason=options["reason"], report=lambda *r: reports.append(r)
        )
        rows = _rows(reports)
        counts = {
            "would_replay" if criteria.dry_run else "replayed": len(summary.replayed),
            "skipped": len(summary.skipped),
            "failed": len(summary.failed),
        }
        if options["json"]:
            self.stdout.write(json.dumps({"counts": counts, "dead_letters": rows}, indent=2, default=str))
        else:
            self._write_text(rows, counts)
        if summary.failed:
            raise CommandError(f"{len(summary.failed)} dead letters could not be replayed")

    def _write_text(self, rows: list[dict], counts: dict[str, int]) -> None:
        now = timezone.now()
        for row in rows:
            failed_at = row["failed_at"]
            when = f"{failed_at:%Y-%m-%d %H:%M} ({_age(now - failed_at)} ago)" if failed_at else "time unknown"
            attempts = f"{row['attempts']} attempts" if row["attempts"] else "attempts unknown"
            self.stdout.write(
                f"{row['action']:<12} {row['origin_queue'] or '?':<15} order {row['order_id'] or '?':<36}  "
                f"{row['event_type'] or '?'}"
            )
            self.stdout.write(f"{'':<12} {_cut(row['failure'], 100)}; {attempts}, failed {when}")
            self.stdout.write(
                f"{'':<12} task {row['task_id']}, replays {row['replay_count']}"
                + (f"; {row['reason']}" if row["reason"] else "")
            )
        causes = Counter((row["origin_queue"] or "?", row["failure"].split(":", 1)[0]) for row in rows)
        if causes:
            self.stdout.write("by cause:")
            for (queue, cause), count in sorted(causes.items(), key=lambda item: -item[1]):
                self.stdout.write(f"  {count:>6}  {queue:<15} {cause}")
        self.stdout.write(", ".join(f"{name.replace('_', ' ')} {count}" for name, count in counts.items()))


def _command_actor() -> str:
    try:
        return f"replay_dead_letters ({getpass.getuser()})"
    except (KeyError, OSError):  # no name for this uid, e.g. in a container
        return "replay_dead_letters"


def _rows(reports: list[tuple[str, DeadLetterMessage, str]]) -> list[dict]:
    failures = dead_letter_failures(letter.task_id for _, letter, _ in reports)
    rows = []
    for action, letter, why in reports:
        failure = failures.get(letter.task_id)
        rows.append(
            {
                "action": action,
                "dlq": letter.dlq,
                "origin_queue": letter.origin_queue,
                "task_name": letter.task_name,
                "task_id": letter.task_id,
                "event_type": letter.event_type,
                "event_id": letter.event_id,
                "order_id": letter.order_id,
                "replay_count": letter.replay_count,
                "failure": failure.summary if failure else f"{letter.death_reason or 'unknown'} (no failure recorded)",
                "attempts": failure.attempts if failure else None,
                "failed_at": failure.failed_at if failure else None,
                "reason": why,
            }
        )
    return rows


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
