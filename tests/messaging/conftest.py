"""Broker helpers for messaging tests that publish and read real messages (no workers running)."""


def drain(conn, queue: str) -> list:
    """Take every message from `queue` (acking each) and return them."""
    from kombu import Queue

    bound = Queue(queue, no_declare=True).bind(conn.default_channel)
    messages = []
    while (message := bound.get(no_ack=True, accept=["json"])) is not None:
        messages.append(message)
    return messages
