"""The Celery app: configuration from Django settings, shared queues, topology at worker start."""

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps, signals
from celery.worker import consumer
from celery.worker.consumer.delayed_delivery import MAX_RETRIES, RETRIED_EXCEPTIONS, RETRY_INTERVAL, DelayedDelivery
from kombu import Connection
from kombu.message import Message
from kombu.utils.functional import retry_over_time

from ordering.logging import celery_banner_as_log_line, celery_keeps_django_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordering.settings")

logger = logging.getLogger(__name__)

app = Celery("ordering")
app.config_from_object("django.conf:settings", namespace="CELERY")


class DeclareTopology(bootsteps.StartStopStep):
    """Declare (or check: ensure_topology) exchanges, queues and dead-letter queues on every (re)connection.

    Runs before the worker starts consuming, so a rejected message always finds its DLX, also
    after a broker restart that lost non-durable state or a fresh vhost.
    """

    requires = {"celery.worker.consumer.connection:Connection"}

    def start(self, c) -> None:
        from ordering.messaging.topology import ensure_topology

        ensure_topology(c.connection)


@app.on_after_configure.connect
def _configure_queues(sender: Celery, **kwargs) -> None:
    # Producer and worker share this one definition (ordering/messaging/topology.py).
    from ordering.messaging.topology import task_queues, task_routes

    sender.conf.task_queues = task_queues()
    sender.conf.task_routes = task_routes()
    sender.conf.task_default_queue = sender.conf.task_queues[0].name


class DelayedDeliveryThroughAnyNode(DelayedDelivery):
    """Celery's native delayed delivery (retries waiting in the broker), set up through any one node.

    Celery takes every URL of a failover list for a broker of its own and sets each up, with
    retries 1, 3 and 5 s apart for one that does not answer, before the worker consumes again: a
    worker that reconnects after a cluster lost a node would wait ten seconds for the dead one. A
    cluster's nodes share exchanges, queues and bindings, so one node is enough, and the failover
    connection (the whole list) finds one that runs.
    """

    def start(self, c: consumer.Consumer) -> None:
        self._validate_configuration(c.app)
        try:
            retry_over_time(
                self._setup_delayed_delivery,
                args=(c, c.app.conf.broker_url),
                catch=RETRIED_EXCEPTIONS,
                errback=self._on_retry,
                interval_start=RETRY_INTERVAL,
                max_retries=MAX_RETRIES,
            )
        except Exception as exc:  # as Celery: the worker consumes on, without delayed retries
            logger.critical("native delayed delivery could not be set up, retries will not wait in the broker: %s", exc)


class Consumer(consumer.Consumer):
    """Celery's consumer, reconnecting to a broker that went away every few seconds at most.

    Celery leaves the reconnection intervals to kombu's defaults (2 s, growing by 2 s up to 30 s):
    after a half-minute outage a worker could stay away for many seconds more while its queue
    fills. Here they start at 0.5 s and stop growing at BROKER_RECONNECT_MAX_SECONDS.
    """

    class Blueprint(consumer.Consumer.Blueprint):
        default_steps = [
            "ordering.celery:DelayedDeliveryThroughAnyNode" if step.endswith(":DelayedDelivery") else step
            for step in consumer.Consumer.Blueprint.default_steps
        ]

    def ensure_connected(self, conn):
        return super().ensure_connected(reconnecting_quickly(conn))

    # A message the worker cannot read goes to its queue's dead-letter queue, where an operator
    # sees it (`replay_dead_letters --dry-run`, the admin), and its body is never logged (it may
    # hold personal data, or be huge). Celery acks (drops) an undecodable one and logs bodies.

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._reject_unreadable(message, f"cannot be decoded ({type(exc).__name__}: {exc})", type(exc).__name__)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._reject_unreadable(message, "is not a task message", "UnknownMessage")
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._reject_unreadable(
            message, f"is not a valid task message ({type(exc).__name__}: {exc})", type(exc).__name__
        )
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        headers = message.headers or {}
        self._reject_unreadable(
            message, f"names a task this worker does not know ({headers.get('task')!r})", type(exc).__name__
        )
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=headers.get("task"), id=headers.get("id"))

    def _reject_unreadable(self, message: Message, problem: str, exception: str) -> None:
        info = message.delivery_info or {}
        logger.error(
            "message %s on %s %s: rejected to its dead-letter queue (content type %r, %d bytes; body not logged)",
            (message.headers or {}).get("id") or info.get("delivery_tag"),
            info.get("routing_key"),
            problem[:500],
            message.content_type,
            len(message.body or b""),
        )
        message.reject_log_error(logger, self.connection_errors, requeue=False)
        from ordering import catalogue
        from ordering.messaging.metrics import dead_letter_count

        # The queue label stays bounded: a routing key that is not a consumer queue counts as "other".
        queue = info.get("routing_key")
        dead_letter_count(queue=queue if queue in catalogue.CONSUMER_QUEUES else "other", exception=exception)


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


def maintenance_task(name: str) -> Callable[[Callable[[], object]], Any]:
    """A periodic job beat sends to the maintenance queue (catalogue.MAINTENANCE_TASKS).

    No result and no failure record: a failure is logged, the message is dropped (the queue has no
    dead-letter queue) and the next tick runs the job again. A stored failure would be listed
    among the dead letters, which are events, and stay "unresolved" forever.
    """
    return app.task(name=name, ignore_result=True, store_errors_even_if_ignored=False)


@signals.worker_init.connect
def _metrics_at_worker_start(**kwargs: Any) -> None:
    # In the main process, before the pool starts: pool processes write their samples to the
    # emptied directory, and the main process serves them all on METRICS_PORT.
    from ordering.metrics import exporter_start, multiprocess_dir_prepare

    multiprocess_dir_prepare()
    exporter_start(multiprocess=True)


@signals.worker_process_shutdown.connect
def _metrics_pool_process_exits(pid: int, **kwargs: Any) -> None:
    # In the exiting pool process. One that is killed cannot say so: the exporter marks it dead
    # at the next scrape (ordering/metrics.py, dead_processes_mark).
    from ordering.metrics import process_mark_dead

    process_mark_dead(pid)


# Logging is Django's LOGGING (ordering/settings.py), in the worker as everywhere (ordering/logging.py).
signals.setup_logging.connect(celery_keeps_django_logging)
signals.celeryd_after_setup.connect(celery_banner_as_log_line)

app.steps["consumer"].add(DeclareTopology)
app.autodiscover_tasks()
