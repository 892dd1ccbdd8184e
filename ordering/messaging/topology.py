"""The RabbitMQ topology: exchanges, consumer queues, dead-letter exchange and queues, the maintenance queue.

`task_queues()` is the one definition the producer (relay) and the workers share. Celery
declares the consumer queues itself but never the dead-letter exchange or queues, and a message
rejected towards a missing DLX vanishes silently, so `declare_topology()` declares everything,
idempotently, at worker start (a consumer bootstep), at relay start and in the replay command
(`ensure_topology()`: or only checks it, where the processes' broker users may not declare).
"""

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from amqp.exceptions import PreconditionFailed
from django.conf import settings
from kombu import Connection, Exchange, Queue

from ordering import catalogue

logger = logging.getLogger(__name__)

# Topic, not direct: Celery's native delayed delivery (how a retry's countdown waits in the
# broker instead of in worker memory) only works with topic exchanges.
EVENTS_EXCHANGE = Exchange(catalogue.EVENTS_EXCHANGE, type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange(catalogue.DEAD_LETTER_EXCHANGE, type="direct", durable=True)


def consumer_queue(name: str) -> Queue:
    """A quorum queue that dead-letters to its own DLQ.

    x-delivery-limit dead-letters a message that was delivered too often without an ack or a
    reject (a message that kills its worker each time). at-least-once dead-lettering (which needs
    reject-publish overflow) keeps a message in this queue until the DLQ confirmed it.
    """
    return Queue(
        name,
        exchange=EVENTS_EXCHANGE,
        routing_key=name,
        durable=True,
        queue_arguments={
            **_replicated(),
            "x-delivery-limit": settings.MESSAGING["DELIVERY_LIMIT"],
            "x-dead-letter-exchange": catalogue.DEAD_LETTER_EXCHANGE,
            # Fixed key: without it a retried message would be dead-lettered with the routing
            # key of the delay queue it passed through and match no DLQ.
            "x-dead-letter-routing-key": name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


# Returns a dead letter may take before its DLQ drops it: out of reach. Replay and the admin's
# listing hold the letters they skip unacked and return them, and a quorum queue counts every
# return against its delivery limit (RabbitMQ 4 sets 20 when none is given; 3.x has none). A
# million returns is one replay a minute for two years; -1 means "no limit" only from 4.0 on, and a
# value every version reads the same is the safer one.
DEAD_LETTER_QUEUE_DELIVERY_LIMIT = 1_000_000


def dead_letter_queue(name: str) -> Queue:
    """The DLQ of consumer queue `name`: a quorum queue too, so it survives the loss of a node.

    It has no dead-letter exchange of its own: a letter is only ever replayed or discarded by hand.
    """
    return Queue(
        catalogue.dead_letter_queue(name),
        exchange=DEAD_LETTER_EXCHANGE,
        routing_key=name,
        durable=True,
        queue_arguments={**_replicated(), "x-delivery-limit": DEAD_LETTER_QUEUE_DELIVERY_LIMIT},
    )


def _replicated() -> dict[str, object]:
    """The arguments of a quorum queue with MESSAGING["QUORUM_INITIAL_GROUP_SIZE"] replicas."""
    group_size = settings.MESSAGING["QUORUM_INITIAL_GROUP_SIZE"]
    return {"x-queue-type": "quorum"} | ({"x-quorum-initial-group-size": group_size} if group_size else {})


# A periodic job's message older than this is dropped unconsumed: beat sends a fresh one on its
# next tick, so a worker back after a long absence runs each job once, not once per missed tick.
MAINTENANCE_MESSAGE_TTL_MS = 10 * 60 * 1000


def maintenance_queue() -> Queue:
    """The quorum queue of the periodic jobs Celery beat sends (watchdog, retention purges).

    No dead-letter queue: every job is idempotent and sent again on beat's next tick, so a
    message that fails (rejected), kills its worker past the delivery limit or waits past its
    TTL is dropped, and the next run does the work. Its failures are logged, not recorded as
    dead letters (the tasks store no results).
    """
    return Queue(
        catalogue.MAINTENANCE_QUEUE,
        exchange=EVENTS_EXCHANGE,
        routing_key=catalogue.MAINTENANCE_QUEUE,
        durable=True,
        queue_arguments={
            **_replicated(),
            "x-delivery-limit": settings.MESSAGING["DELIVERY_LIMIT"],
            "x-message-ttl": MAINTENANCE_MESSAGE_TTL_MS,
        },
    )


def task_queues() -> tuple[Queue, ...]:
    """The queues as Celery consumes them (and declares them, unless the topology is only checked).

    The consumer queues first: the first is Celery's default queue.
    """
    queues = (*(consumer_queue(name) for name in catalogue.CONSUMER_QUEUES), maintenance_queue())
    if not settings.MESSAGING["DECLARE_TOPOLOGY"]:
        for queue in queues:
            queue.no_declare = True
    return queues


def task_routes() -> dict[str, dict[str, str]]:
    routes = {s.task_name: {"queue": s.queue, "routing_key": s.queue} for s in catalogue.SUBSCRIPTIONS}
    maintenance = {"queue": catalogue.MAINTENANCE_QUEUE, "routing_key": catalogue.MAINTENANCE_QUEUE}
    return routes | dict.fromkeys(catalogue.MAINTENANCE_TASKS, maintenance)


class TopologyMissing(Exception):
    """An exchange or queue of the system does not exist, and this process may not declare it."""


class TopologyMismatch(Exception):
    """A queue exists with other arguments than this version declares (RabbitMQ refuses to change them)."""


def ensure_topology(connection: Connection) -> None:
    """What the relay and the workers run on every (re)connection: declare the topology, or check it.

    With MESSAGING["DECLARE_TOPOLOGY"] (the default) they declare it, so a broker that lost it or a
    fresh vhost gets it back before any message is published or rejected. Deployments whose
    processes have least-privilege broker users (docker-compose) turn it off: one job with the
    rights declares it (`manage.py declare_topology`), and the others only check that it is there
    (a passive declare needs no permission), failing loudly if not.
    """
    if settings.MESSAGING["DECLARE_TOPOLOGY"]:
        declare_topology(connection)
        return
    for exchange in (EVENTS_EXCHANGE, DEAD_LETTER_EXCHANGE):
        _check_exists(connection, "exchange", exchange.name, lambda ch, e=exchange: e.bind(ch).declare(passive=True))
    for name in catalogue.CONSUMER_QUEUES:
        for queue in (name, catalogue.dead_letter_queue(name)):
            _check_exists(connection, "queue", queue, lambda ch, q=queue: ch.queue_declare(queue=q, passive=True))
    _check_exists(
        connection,
        "queue",
        catalogue.MAINTENANCE_QUEUE,
        lambda ch: ch.queue_declare(queue=catalogue.MAINTENANCE_QUEUE, passive=True),
    )
    logger.info("topology present: %s", ", ".join((*catalogue.CONSUMER_QUEUES, catalogue.MAINTENANCE_QUEUE)))


def _check_exists(connection: Connection, kind: str, name: str, declare_passively: Callable[[Any], object]) -> None:
    # A failed passive declare closes its channel: each check gets a channel of its own.
    channel = connection.channel()
    try:
        declare_passively(channel)
    except connection.channel_errors as exc:
        raise TopologyMissing(
            f"{kind} {name!r} does not exist: declare the topology first (manage.py declare_topology)"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def declare_topology(connection: Connection) -> None:
    """Declare every exchange and queue of the system; safe to call any number of times."""
    channel = connection.default_channel
    EVENTS_EXCHANGE.bind(channel).declare()
    DEAD_LETTER_EXCHANGE.bind(channel).declare()
    queues = [queue for name in catalogue.CONSUMER_QUEUES for queue in (dead_letter_queue(name), consumer_queue(name))]
    for queue in (*queues, maintenance_queue()):
        try:
            queue.bind(channel).declare()
        except PreconditionFailed as exc:
            # Queues declared by an earlier version (classic DLQs, no replica count) keep their
            # arguments: say what to do instead of failing on RabbitMQ's words alone.
            raise TopologyMismatch(
                f"queue {queue.name!r} exists with other arguments than this version declares ({exc.reply_text}): "
                "move its messages away, delete it and declare the topology again (README, 'Scaling out'); "
                "if only x-quorum-initial-group-size differs, QUORUM_INITIAL_GROUP_SIZE=0 keeps the queue as it is"
            ) from exc
    logger.info("topology declared: %s", ", ".join((*catalogue.CONSUMER_QUEUES, catalogue.MAINTENANCE_QUEUE)))
