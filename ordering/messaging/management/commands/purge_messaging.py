"""Delete what the messaging tables no longer need (beat runs the same purge periodically)."""

from django.core.management.base import BaseCommand

from ordering.messaging.retention import messaging_purge_expired


class Command(BaseCommand):
    help = (
        "Delete published outbox rows, inbox rows, retry records and resolved dead-letter records past their "
        "retention (RETENTION_* settings); never unpublished events or unresolved dead letters."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args, **options) -> None:
        counts = messaging_purge_expired(dry_run=options["dry_run"])
        verb = "would purge" if options["dry_run"] else "purged"
        self.stdout.write(
            f"{verb} {counts.outbox} published outbox events, {counts.task_results} task records "
            f"(retries, resolved dead letters), {counts.inbox} inbox rows"
        )
        if counts.unfinished:
            self.stdout.write("more left: run it again (or wait for the next scheduled run)")
