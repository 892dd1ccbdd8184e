"""Run the outbox relay in the foreground until SIGINT or SIGTERM."""

import signal
import threading

from django.core.management.base import BaseCommand

from ordering.celery import app
from ordering.messaging.relay import OutboxRelay
from ordering.metrics import exporter_start, multiprocess_dir_prepare


class Command(BaseCommand):
    help = "Publish committed outbox events to RabbitMQ (publisher confirms), forever."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        # The relay is a process group of its own: its directory and its exporter (METRICS_PORT).
        multiprocess_dir_prepare()
        exporter_start(multiprocess=False)
        OutboxRelay(app).run(stop)
