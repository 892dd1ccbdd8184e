"""The Celery app: configuration from Django settings, shared queues, topology at worker start."""

import functools
import os

from celery import Celery, bootsteps
from celery.worker import consumer
from kombu import Connection

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordering.settings")

app = Celery("ordering")
app.config_from_object("django.conf:settings", namespace="CELERY")


class DeclareTopology(bootsteps.StartStopStep):
    """Declare exchanges, queues and dead-letter queues each time the consumer (re)connects.

    Runs before the worker starts consuming, so a rejected message always finds its DLX, also
    after a broker restart that lost non-durable state or a fresh vhost.
    """

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, c) -> None:
        from ordering.messaging.topology import declare_topology

        declare_topology(c.connection)


@app.on_after_configure.connect
def _configure_queues(sender: Celery, **kwargs) -> None:
    # Producer and worker share this one definition (ordering/messaging/topology.py).
    from ordering.messaging.topology import task_queues, task_routes

    sender.conf.task_queues = task_queues()
    sender.conf.task_routes = task_routes()
    sender.conf.task_default_queue = sender.conf.task_queues[0].name


class Consumer(consumer.Consumer):
    """Celery's consumer, reconnecting to a broker that went away every few seconds at most.

    Celery leaves the reconnection intervals to kombu's defaults (2 s, growing by 2 s up to 30 s):
    after a half-minute outage a worker could stay away for many seconds more while its queue
    fills. Here they start at 0.5 s and stop growing at BROKER_RECONNECT_MAX_SECONDS.
    """

    def ensure_connected(self, conn):
        return super().ensure_connected(reconnecting_quickly(conn))


def reconnecting_quickly(conn: Connection) -> Connection:
    """`conn`, whose ensure_connection() retries at 0.5 s, then 1 s, ... up to BROKER_RECONNECT_MAX_SECONDS."""
    from django.conf import settings

    conn.ensure_connection = functools.partial(
        conn.ensure_connection,
        interval_start=0.5,
        interval_step=0.5,
        interval_max=settings.MESSAGING["BROKER_RECONNECT_MAX_SECONDS"],
    )
    return conn


app.steps["consumer"].add(DeclareTopology)
app.autodiscover_tasks()
