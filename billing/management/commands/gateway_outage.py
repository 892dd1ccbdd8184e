"""Switch the simulated payment gateway's outage of charges (or of refunds) on for a while, or off."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.models import GatewayOperation, SimulatedGatewayOutage


class Command(BaseCommand):
    help = (
        "Make the simulated gateway fail every charge (or, with --refunds, every refund) with a transient error "
        "for N seconds; --off ends the outages (of refunds only, with --refunds)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--seconds", type=float, help="outage length in seconds")
        parser.add_argument("--refunds", action="store_true", help="an outage of refunds, not of charges")
        parser.add_argument("--off", action="store_true", help="end the outages now")

    def handle(self, *args, **options) -> None:
        operation = GatewayOperation.REFUND if options["refunds"] else GatewayOperation.CHARGE
        if options["off"]:
            ongoing = SimulatedGatewayOutage.objects.filter(until__gt=timezone.now())
            if options["refunds"]:
                ongoing = ongoing.filter(operation=operation)
            ongoing.update(until=timezone.now())
            self.stdout.write(f"gateway outage{' of refunds' if options['refunds'] else 's'} ended")
            return
        if not options["seconds"] or options["seconds"] <= 0:
            raise CommandError("give --seconds N (N > 0) or --off")
        until = timezone.now() + timedelta(seconds=options["seconds"])
        SimulatedGatewayOutage.objects.create(until=until, operation=operation, note="manage.py gateway_outage")
        self.stdout.write(f"gateway outage of {operation}s until {until.isoformat()}")
