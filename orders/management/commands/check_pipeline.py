"""Report orders that are stuck and what holds them up; exit 1 if anything needs an operator."""

import re
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ordering.messaging.models import DeadLetter
from ordering.messaging.selectors import dead_letter_envelope, dead_letters_unresolved, failure_summary, outbox_backlog
from orders.selectors import StuckState, order_list_stuck, order_list_stuck_classified

SHOWN = 20
# The relay's kwargsrepr ("{envelope: <type> <event id> order <order id>}"): all a failure
# recorded for a lost worker says about its order.
_KWARGSREPR_ORDER = re.compile(r"order ([0-9a-fA-F-]{36})")


class Command(BaseCommand):
    help = "Stuck orders, unpublished events and unresolved dead letters (for monitoring; exit 1 if any)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--pending-minutes",
            type=float,
            default=settings.WATCHDOG["STUCK_AFTER_SECONDS"] / 60,
            help="PENDING (or CANCELING) longer than this is stuck (default: WATCHDOG_STUCK_AFTER_SECONDS)",
        )
        parser.add_argument("--outbox-seconds", type=float, default=60, help="unpublished longer than this is late")

    def handle(self, *args, **options) -> None:
        stuck_after = timedelta(minutes=options["pending_minutes"])
        total = order_list_stuck(older_than=stuck_after).count()
        # Oldest first, WATCHDOG["MAX_ORDERS"] at most: the counts by state are of those.
        classified = order_list_stuck_classified(older_than=stuck_after)
        counts = Counter(stuck.state for stuck in classified)
        backlog = outbox_backlog(older_than=timedelta(seconds=options["outbox_seconds"]))
        dead = dead_letters_unresolved()
        by_state = ", ".join(f"{state} {counts[state]}" for state in StuckState)
        self.stdout.write(f"orders pending or canceling > {options['pending_minutes']:g} min: {total} ({by_state})")
        now = timezone.now()
        for stuck in classified[:SHOWN]:
            minutes = (now - stuck.since).total_seconds() / 60
            self.stdout.write(
                f"  order {stuck.order_id}  {stuck.status.lower()} {minutes:.0f} min  {stuck.state}: {stuck.detail}"
            )
        self.stdout.write(f"outbox events unpublished > {options['outbox_seconds']:g} s: {backlog}")
        self.stdout.write(f"unresolved dead letters: {len(dead)}")
        for failure in dead[:SHOWN]:
            self.stdout.write(
                f"  order {_order_of(failure)}  {failure.task_name}[{failure.task_id}]  {failure_summary(failure)}"
            )
        if total or backlog or dead:
            raise CommandError(
                "the pipeline needs attention (see above; the watchdog re-drives missing orders, "
                "replay dead letters with replay_dead_letters)"
            )
        self.stdout.write(self.style.SUCCESS("pipeline healthy"))


def _order_of(failure: DeadLetter) -> str:
    order_id = (dead_letter_envelope(failure) or {}).get("aggregate_id")
    if not order_id:
        match = _KWARGSREPR_ORDER.search(failure.task_kwargs or "")
        order_id = match.group(1) if match else None
    return str(order_id or "?")
