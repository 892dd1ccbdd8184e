"""Declare the RabbitMQ exchanges, queues and dead-letter queues (idempotent)."""

from django.core.management.base import BaseCommand

from ordering.celery import app
from ordering.messaging.broker import connect
from ordering.messaging.topology import declare_topology


class Command(BaseCommand):
    help = "Declare every exchange and queue of the system on the configured broker."

    def handle(self, *args, **options) -> None:
        with app.connection_for_write() as connection:
            connect(connection, rounds=3)
            declare_topology(connection)
        self.stdout.write(self.style.SUCCESS("topology declared"))
