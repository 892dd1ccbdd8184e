"""Delete expired idempotency keys: schedule it (e.g. hourly); expired keys are free to reuse without it."""

from django.core.management.base import BaseCommand

from ordering.idempotency.keys import idempotency_keys_purge


class Command(BaseCommand):
    help = "Delete idempotency keys older than IDEMPOTENCY_KEY_TTL_SECONDS (run it periodically)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch-size", type=int, default=10_000, help="rows deleted per statement")

    def handle(self, *args, **options) -> None:
        deleted = idempotency_keys_purge(batch_size=options["batch_size"])
        self.stdout.write(f"purged {deleted} expired idempotency keys")
