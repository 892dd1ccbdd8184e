"""Switch the simulated payment gateway's outage on for a while, or off."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.models import SimulatedGatewayOutage


class Command(BaseCommand):
    help = "Make the simulated gateway fail every charge with a transient error for N seconds (--off ends it)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--seconds", type=float, help="outage length in seconds")
        parser.add_argument("--off", action="store_true", help="end every outage now")

    def handle(self, *args, **options) -> None:
        if options["off"]:
            SimulatedGatewayOutage.objects.filter(until__gt=timezone.now()).update(until=timezone.now())
            self.stdout.write("gateway outage ended")
            return
        if not options["seconds"] or options["seconds"] <= 0:
            raise CommandError("give --seconds N (N > 0) or --off")
        until = timezone.now() + timedelta(seconds=options["seconds"])
        SimulatedGatewayOutage.objects.create(until=until, note="manage.py gateway_outage")
        self.stdout.write(f"gateway outage until {until.isoformat()}")
