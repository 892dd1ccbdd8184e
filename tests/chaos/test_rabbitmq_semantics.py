"""What the chaos run relies on from this RabbitMQ, checked against the running broker.

- A message returned because its consumer's channel closed (a killed worker, a broker
  connection lost) counts against the quorum queue's x-delivery-limit: after `limit` returns
  the next return dead-letters it with reason `delivery_limit`. So a message that keeps killing
  its worker ends in the DLQ, and an ordinary message survives `limit` crashes of its consumer.
- A reject with requeue=False (a task that failed for good) dead-letters at once, reason
  `rejected`, without touching the delivery count of other messages.
- The system's dead-letter queues (quorum, so replicated) keep a letter however often replay
  returned it: past RabbitMQ 4's default delivery limit of 20, too.

RabbitMQ 4.x differs (docs/chaos.md): 4.0 gives every quorum queue a delivery limit of 20 when
none is set, and 4.3 counts only failed deliveries in x-delivery-count (a separate
x-acquired-count counts every hand-out). We always set the limit explicitly.
"""

import os
import time
import uuid

import pytest
from kombu import Connection, Exchange, Queue

pytestmark = pytest.mark.chaos

LIMIT = 2


@pytest.fixture
def queues():
    """A quorum queue with a delivery limit that dead-letters into a classic queue, then removed."""
    name = f"semantics-{uuid.uuid4().hex[:8]}"
    dlx = Exchange(f"{name}.dlx", type="direct", durable=False, auto_delete=False)
    classic = {"x-queue-type": "classic"}
    dlq = Queue(f"{name}.dlq", exchange=dlx, routing_key=name, durable=True, queue_arguments=classic)
    queue = Queue(
        name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": LIMIT,
            "x-dead-letter-exchange": dlx.name,
            "x-dead-letter-routing-key": name,
        },
    )
    with Connection(os.environ["CELERY_BROKER_URL"]) as connection:
        channel = connection.channel()
        dlx.bind(channel).declare()
        dlq.bind(channel).declare()
        queue.bind(channel).declare()
        yield connection, queue, dlq
        channel = connection.channel()
        queue.bind(channel).delete()
        dlq.bind(channel).delete()
        dlx.bind(channel).delete()


def _get(connection: Connection, queue: Queue, timeout: float = 5):
    """basic.get on a fresh channel, waiting a little for a returned message to reappear."""
    channel = connection.channel()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = queue.bind(channel).get(no_ack=False)
        if message is not None:
            return channel, message
        time.sleep(0.05)
    channel.close()
    return None, None


def _publish(connection: Connection, queue: Queue, body: str) -> None:
    with connection.Producer() as producer:
        producer.publish(body, exchange="", routing_key=queue.name, delivery_mode=2)


def test_channel_close_returns_count_against_the_delivery_limit(queues):
    connection, queue, dlq = queues
    _publish(connection, queue, "kills its consumer")
    deliveries = 0
    for _ in range(LIMIT + 3):
        channel, message = _get(connection, queue)
        if message is None:
            break
        deliveries += 1
        if deliveries > 1:
            assert message.headers.get("x-delivery-count") == deliveries - 1
        channel.close()  # no ack, no reject: what a killed worker leaves behind
    assert deliveries == LIMIT + 1
    channel, letter = _get(connection, dlq)
    assert letter is not None, "the message was dropped instead of dead-lettered"
    assert letter.body in {b"kills its consumer", "kills its consumer"}
    assert letter.headers["x-death"][0]["reason"] == "delivery_limit"
    letter.ack()
    channel.close()


def test_reject_without_requeue_dead_letters_at_once(queues):
    connection, queue, dlq = queues
    _publish(connection, queue, "fails for good")
    channel, message = _get(connection, queue)
    message.reject(requeue=False)
    channel.close()
    channel, letter = _get(connection, dlq)
    assert letter is not None
    assert letter.headers["x-death"][0]["reason"] == "rejected"
    letter.ack()
    channel.close()
    with connection.channel() as channel:
        assert queue.bind(channel).queue_declare(passive=True).message_count == 0


# RabbitMQ 4.0 gives a quorum queue without an explicit x-delivery-limit a limit of 20.
RABBITMQ_4_DEFAULT_DELIVERY_LIMIT = 20


def test_a_dead_letter_queue_keeps_a_letter_that_replay_returned_more_often_than_any_default_limit(broker):
    """Replay returns the letters it skips by closing its channel: the DLQ must never drop one for it."""
    from ordering import catalogue

    dlq = Queue(catalogue.dead_letter_queue(catalogue.BILLING_QUEUE), no_declare=True)
    with broker.Producer() as producer:
        producer.publish(
            "skipped by every replay", exchange=catalogue.DEAD_LETTER_EXCHANGE, routing_key=catalogue.BILLING_QUEUE
        )
    returns = RABBITMQ_4_DEFAULT_DELIVERY_LIMIT + 5
    for _ in range(returns):
        channel, letter = _get(broker, dlq)
        assert letter is not None, "the dead-letter queue dropped a returned letter"
        channel.close()  # what replay does with a letter it skipped
    channel, letter = _get(broker, dlq)
    assert letter is not None
    assert letter.headers.get("x-delivery-count") == returns
    letter.ack()
    channel.close()
