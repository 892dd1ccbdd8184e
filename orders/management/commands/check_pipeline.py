"""Report orders that are stuck and what holds them up; exit 1 if anything needs an operator."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from ordering.messaging.selectors import dead_letters_unresolved, failure_summary, outbox_backlog
from orders.selectors import order_list_stuck


class Command(BaseCommand):
    help = "Stuck orders, unpublished events and unresolved dead letters (for monitoring; exit 1 if any)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--pending-minutes", type=float, default=5, help="PENDING longer than this is stuck")
        parser.add_argument("--outbox-seconds", type=float, default=60, help="unpublished longer than this is late")

    def handle(self, *args, **options) -> None:
        stuck = order_list_stuck(older_than=timedelta(minutes=options["pending_minutes"]))
        backlog = outbox_backlog(older_than=timedelta(seconds=options["outbox_seconds"]))
        dead = dead_letters_unresolved()
        self.stdout.write(f"orders pending > {options['pending_minutes']:g} min: {stuck.count()}")
        for order in stuck[:20]:
            self.stdout.write(f"  {order.id}  created {order.created_at:%Y-%m-%d %H:%M:%S}  buyer {order.buyer}")
        self.stdout.write(f"outbox events unpublished > {options['outbox_seconds']:g} s: {backlog}")
        self.stdout.write(f"unresolved dead letters: {len(dead)}")
        for failure in dead[:20]:
            self.stdout.write(f"  {failure.task_name}[{failure.task_id}]  {failure_summary(failure)}")
        if stuck.exists() or backlog or dead:
            raise CommandError("the pipeline needs attention (see above; replay with replay_dead_letters)")
        self.stdout.write(self.style.SUCCESS("pipeline healthy"))
