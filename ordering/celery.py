"""The Celery app: configuration from Django settings, shared queues, topology at worker start."""

import os

from celery import Celery, bootsteps

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


app.steps["consumer"].add(DeclareTopology)
app.autodiscover_tasks()
