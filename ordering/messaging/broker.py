"""Connecting to the broker: a single node, or any node of a cluster given as a list of URLs.

CELERY_BROKER_URL (and REPLAY_BROKER_URL) may name the nodes of a RabbitMQ cluster separated by
';'. kombu then connects to the first and, when an attempt fails, switches to the next at once,
waiting (interval_start, interval_step, ...) only after a whole round of the list failed.
"""

from kombu import Connection


def connect(connection: Connection, *, rounds: int = 1, timeout: float | None = None) -> Connection:
    """Connect `connection`, trying every node of its list, `rounds` times over, before giving up.

    A single node is tried 1 + `rounds` times (kombu's max_retries counts the attempts after the
    first); a list of N nodes 1 + `rounds` * N times, so a dead node never uses up the attempts.
    """
    connection.ensure_connection(max_retries=rounds * max(len(connection.alt), 1), timeout=timeout)
    return connection
