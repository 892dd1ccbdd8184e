"""The worker-side batcher's rules, on a stand-in pool: when messages batch, how they are settled.

What the pool does with a batch (the machinery, the database, time limits) is covered with real
worker processes in tests/integration; these tests pin the bookkeeping around it, including the
cases a real pool cannot be made to produce on demand (a batch it never reports on).
"""

import itertools
import json
from dataclasses import dataclass, field

import pytest

from ordering import catalogue
from ordering.celery import app
from ordering.messaging import batching
from ordering.messaging.batching import Batcher
from ordering.messaging.consumer import Outcome


@dataclass
class Channel:
    is_open: bool = True


@dataclass
class Message:
    delivery_tag: int
    channel: Channel
    redelivered: bool = False
    headers: dict = field(default_factory=dict)
    properties: dict = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        self.headers = {"id": f"task-{self.delivery_tag}", "task": catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED}
        self.body = json.dumps([[], {"envelope": {}}, {}]).encode()

    @property
    def delivery_info(self) -> dict:
        return {"exchange": "", "routing_key": catalogue.ORDERS_QUEUE, "redelivered": self.redelivered}


@dataclass
class Settled:
    acks: list = field(default_factory=list)  # (tag, multiple)
    rejects: list = field(default_factory=list)  # (tag, requeue)


class Pool:
    """Holds applied batches until the test says how each ends."""

    limit = 1

    def __init__(self) -> None:
        self.applied: list[dict] = []

    def apply_async(self, target, args, callback, error_callback, **options) -> None:
        self.applied.append({"deliveries": args[0], "done": callback, "lost": error_callback})


class Consumer:
    def __init__(self) -> None:
        self.pool = Pool()
        self.hub = None  # flush at once
        self.connection_errors = ()
        self.hostname = "tests@localhost"
        self.event_dispatcher = None
        self.qos = None


@pytest.fixture
def setup():
    app.loader.import_default_modules()
    consumer = Consumer()
    batcher = Batcher.of(consumer, app)
    settled = Settled()
    channel = Channel()
    tags = itertools.count(1)
    task = app.tasks[catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED]

    def receive(redelivered: bool = False) -> int:
        message = Message(next(tags), channel, redelivered)
        tag = message.delivery_tag
        batcher.receive(
            task,
            message,
            lambda logger, errors, multiple=False: settled.acks.append((tag, multiple)),
            lambda logger, errors, requeue: settled.rejects.append((tag, requeue)),
        )
        return tag

    return batcher, consumer.pool, settled, receive


def tags_of(applied: dict) -> list[int]:
    return [int(d.headers["id"].split("-")[1]) for d in applied["deliveries"]]


def test_messages_that_arrive_while_the_pool_process_is_busy_go_as_one_batch(setup):
    _, pool, settled, receive = setup
    receive()
    assert [tags_of(a) for a in pool.applied] == [[1]]  # at once, alone
    for _ in range(3):
        receive()
    assert len(pool.applied) == 1  # waiting: the one pool process is busy
    pool.applied[0]["done"]([Outcome.ACK])
    assert [tags_of(a) for a in pool.applied] == [[1], [2, 3, 4]]
    pool.applied[1]["done"]([Outcome.ACK, Outcome.REJECT, Outcome.ACK])
    assert settled.rejects == [(3, False)]  # dead-lettered
    # Each acked on its own, never with `multiple`: Celery sends acks and rejects in no set
    # order, and a multiple ack of 4 that overtook the reject of 3 would delete 3.
    assert sorted(settled.acks) == [(1, False), (2, False), (4, False)]


def test_a_message_that_comes_back_after_its_pool_process_died_runs_alone(setup):
    _, pool, settled, receive = setup
    receive()
    receive(), receive(redelivered=True), receive()
    pool.applied[0]["lost"](Exception("WorkerLostError"))
    assert settled.rejects == [(1, True)]  # back to its queue
    assert [tags_of(a) for a in pool.applied[1:]] == [[2]]
    pool.applied[1]["done"]([Outcome.ACK])
    pool.applied[2]["done"]([Outcome.ACK])
    assert [tags_of(a) for a in pool.applied[1:]] == [[2], [3], [4]]


def test_a_batch_the_pool_never_reports_on_is_given_up_and_the_worker_goes_on(setup):
    batcher, pool, settled, receive = setup
    receive()
    receive()
    [(key, (batch, started))] = batcher.in_flight.items()
    batcher.in_flight[key] = (batch, started - batcher.time_limit - batching.SILENT_BATCH_GRACE_SECONDS - 1)
    batcher.flush()  # as the watchdog does
    assert settled.rejects == [(1, True)]
    assert [tags_of(a) for a in pool.applied] == [[1], [2]]
    pool.applied[0]["done"]([Outcome.ACK])  # a late word about the batch given up on changes nothing
    assert settled.acks == []
    assert len(batcher.in_flight) == 1


def test_messages_of_a_closed_channel_are_dropped_not_run(setup):
    batcher, pool, _, receive = setup
    receive()
    receive()
    batcher.waiting[0].message.channel.is_open = False  # the connection was lost meanwhile
    pool.applied[0]["done"]([Outcome.ACK])
    assert len(pool.applied) == 1
    assert not batcher.waiting
