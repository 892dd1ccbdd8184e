"""Put dead letters back on the queue they came from."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.publisher import connection_for_confirmed_batches
from ordering.messaging.replay import DeadLetterMessage, ReplayCriteria, replay_dead_letters
from ordering.messaging.selectors import dead_letter_failure


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
        with connection_for_confirmed_batches(app) as connection:
            connection.ensure_connection(max_retries=3)
            summary = replay_dead_letters(connection, criteria, report=self._report)
        verb = "would replay" if criteria.dry_run else "replayed"
        self.stdout.write(
            f"{verb} {len(summary.replayed)}, skipped {len(summary.skipped)}, failed {len(summary.failed)}"
        )
        if summary.failed:
            raise CommandError(f"{len(summary.failed)} dead letters could not be replayed")

    def _report(self, action: str, letter: DeadLetterMessage, why: str) -> None:
        failure = dead_letter_failure(letter.task_id) or letter.death_reason or "unknown"
        self.stdout.write(
            f"{action:>12}  {letter.dlq} -> {letter.origin_queue}  {letter.task_name}[{letter.task_id}]  "
            f"event={letter.event_type}:{letter.event_id}  order={letter.order_id}  "
            f"replays={letter.replay_count}  failure={failure}" + (f"  ({why})" if why else "")
        )
