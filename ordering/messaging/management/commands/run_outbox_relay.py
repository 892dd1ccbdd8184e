"""Run the outbox relay in the foreground until SIGINT or SIGTERM."""

import signal
import threading

from django.core.management.base import BaseCommand

from ordering.celery import app
from ordering.messaging.relay import OutboxRelay


class Command(BaseCommand):
    help = "Publish committed outbox events to RabbitMQ (publisher confirms), forever."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        OutboxRelay(app).run(stop)
