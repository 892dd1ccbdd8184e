"""The worker side of the consumers: messages that wait together are handled together.

Celery's default strategy sends each message to a pool process on its own. This strategy
(`EventConsumerTask.Strategy`) keeps them in the worker's main process and gives a pool process
everything that is waiting when one is free:

- no wait to fill a batch: at low load a batch is the one message that just arrived (the flush
  runs on the event loop's next turn); as load grows, messages pile up while every pool process
  is busy, and the next batch takes them all (up to CONSUMER_BATCH_MAX), so the cost per message
  falls as the load rises;
- at most one batch per pool process in flight, so waiting messages stay here, where they can
  still join a batch, instead of queueing one by one inside the pool;
- acks late: a message is acked (or rejected, to be dead-lettered) only when its batch's outcome
  comes back, i.e. after its transaction committed; a message still waiting here when the
  connection or the worker goes is never acked and RabbitMQ delivers it again; a batch the pool
  never reports on (written to a pool process that died before taking it) is given up after its
  hard time limit and its messages go back to their queue, so the worker goes on;
- a pool process that dies or passes the hard time limit requeues its whole batch
  (`task_reject_on_worker_lost`); RabbitMQ marks those messages redelivered, and a redelivered
  message always runs alone, so a message that kills its worker is isolated from the others at
  once and reaches the queue's delivery limit by itself;
- the time limits apply to each batch, kept by its pool process (`time_limits`): the soft limit
  raises inside the batch and the machinery retries what it had not finished
  (ordering/messaging/consumer.py); past the hard limit the process exits and the batch goes
  back to its queue.

What this gives up, against Celery's per-message tracer: task signals, revocation and rate
limits (no consumer uses them), and cancelling a running batch when the broker connection
drops (its messages are redelivered and the inbox makes the second run a no-op).
"""

import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from functools import partial
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery
from celery.utils.time import maybe_iso8601
from django.conf import settings

from ordering.messaging import metrics
from ordering.messaging.consumer import LOG_RECEIVED, LOG_SUCCEEDED, Delivery, EventConsumerTask, Outcome, consume

logger = logging.getLogger(__name__)

# How long past the hard time limit a batch without any word from the pool counts as lost, and
# how often the batcher looks for one.
SILENT_BATCH_GRACE_SECONDS = 30
WATCH_SECONDS = 10
HARD_TIME_LIMIT_EXIT_CODE = 70


@dataclass(frozen=True)
class _Waiting:
    task: EventConsumerTask
    message: Any  # kombu.Message
    ack: Any  # Celery's ack promise: ack(logger, connection_errors)
    reject: Any  # Celery's reject promise: reject(logger, connection_errors, requeue)
    delivery: Delivery
    received_at: float

    @property
    def redelivered(self) -> bool:
        return bool(self.delivery.delivery_info.get("redelivered"))


class Batcher:
    """One per worker consumer: the waiting messages of every consumer task, and the batches in flight."""

    def __init__(self, consumer: Any, app: Celery) -> None:
        self.consumer = consumer
        self.app = app
        self.pool = consumer.pool
        self.hub = consumer.hub
        self.connection_errors = consumer.connection_errors
        self.hostname = consumer.hostname
        self.eventer = consumer.event_dispatcher
        self.max_in_flight = max(1, int(getattr(self.pool, "limit", 1) or 1))
        self.batch_max = settings.MESSAGING["CONSUMER_BATCH_MAX"]
        self.time_limit = settings.MESSAGING["BATCH_TIME_LIMIT_SECONDS"]
        self.waiting: deque[_Waiting] = deque()
        self._keys = itertools.count()
        self._watchdog: Any = None
        # Batches handed to the pool and not back yet, with when they were handed over.
        self.in_flight: dict[int, tuple[list[_Waiting], float]] = {}

    @classmethod
    def of(cls, consumer: Any, app: Celery) -> "Batcher":
        batcher = getattr(consumer, "_event_batcher", None)
        if batcher is None or batcher.pool is not consumer.pool:
            batcher = consumer._event_batcher = cls(consumer, app)
        batcher._watch()
        return batcher

    def _watch(self) -> None:
        """Flush now and then, whatever arrives: a silent batch is found even when nothing else comes.

        The consumer cancels its timers when it restarts after a lost connection; the strategies
        (and so this) are set up again after each restart.
        """
        if self.hub is None or (self._watchdog is not None and not self._watchdog.canceled):
            return
        self._watchdog = self.hub.timer.call_repeatedly(WATCH_SECONDS, self.flush)

    # --- Main process: receive ----------------------------------------------------------------

    def receive(self, task: EventConsumerTask, message: Any, ack: Any, reject: Any) -> None:
        delivery = Delivery(
            headers=message.headers,
            properties=message.properties,
            delivery_info={
                "exchange": message.delivery_info.get("exchange"),
                "routing_key": message.delivery_info.get("routing_key"),
                "priority": message.properties.get("priority"),
                "redelivered": message.delivery_info.get("redelivered", False),
            },
            body=message.body,
            hostname=self.hostname,
        )
        if logger.isEnabledFor(logging.INFO):
            logger.info(LOG_RECEIVED, task.name, delivery.task_id, extra=delivery.log_fields())
        self._event("task-received", delivery, name=task.name, retries=delivery.retries)
        waiting = _Waiting(task, message, ack, reject, delivery, time.monotonic())
        eta = _eta(delivery)
        if eta is not None and eta > time.time():
            # A retry whose delay RabbitMQ did not hold (or held a little short): wait here,
            # outside the prefetch count, as Celery does with ETA tasks.
            self.consumer.qos.increment_eventually()
            self.hub.timer.call_at(eta, self._eta_reached, (waiting,), priority=6)
            return
        self.waiting.append(waiting)
        self._schedule_flush()

    def _eta_reached(self, waiting: _Waiting) -> None:
        self.consumer.qos.decrement_eventually()
        self.waiting.append(waiting)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # No "already scheduled" flag: a call the event loop dropped (the consumer restarts its
        # loop when the connection is lost) would leave it set and the worker idle for good. An
        # extra flush finds nothing to do.
        if self.hub is None:
            self.flush()
        else:
            # After the event loop has read what the socket holds: those messages join the batch.
            self.hub.call_soon(self.flush)

    def flush(self) -> None:
        self._give_up_on_silent_batches()
        while self.waiting and len(self.in_flight) < self.max_in_flight:
            batch = self._next_batch()
            if batch:
                self._apply(batch)

    def _give_up_on_silent_batches(self) -> None:
        """A batch with neither outcome nor error long after its hard time limit is lost.

        The pool reports every batch it ran, but a batch written to a pool process that died
        before taking it up can vanish without a word; waiting for it would stop this worker.
        Its messages go back to their queue (if their channel still can; else RabbitMQ has them).
        """
        if not self.in_flight:
            return
        limit = (self.time_limit or 0) + SILENT_BATCH_GRACE_SECONDS
        now = time.monotonic()
        for key, (batch, started) in list(self.in_flight.items()):
            if now - started > limit:
                self._lost(key, batch, f"no outcome from the pool after {now - started:.0f} s")

    def _next_batch(self) -> list[_Waiting]:
        first = self.waiting.popleft()
        batch = [first]
        if not first.redelivered:
            while self.waiting and len(batch) < self.batch_max and not self.waiting[0].redelivered:
                batch.append(self.waiting.popleft())
        # A message of a channel that has closed since (connection lost) cannot be acked any
        # more; RabbitMQ has already put it back in its queue for the next delivery.
        return [w for w in batch if w.message.channel is not None and w.message.channel.is_open]

    def _apply(self, batch: list[_Waiting]) -> None:
        key = next(self._keys)
        self.in_flight[key] = (batch, time.monotonic())
        self.pool.apply_async(
            run_batch,
            args=([w.delivery for w in batch],),
            callback=partial(self._done, key, batch),
            error_callback=partial(self._lost, key, batch),
            # No pool timeouts (the pool has none, see settings): the pool process keeps its
            # batch's time itself (time_limits()).
            correlation_id=batch[0].delivery.task_id,
        )

    # --- Main process: outcomes ---------------------------------------------------------------

    def _done(self, key: int, batch: list[_Waiting], outcomes: list[str]) -> None:
        if self.in_flight.pop(key, None) is None:
            return  # given up on already (its messages went back to their queue)
        # One ack (or reject) per message, never `multiple`: Celery sends them in no set order,
        # and a multiple ack that overtook a reject would delete the message it should dead-letter.
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if outcome == Outcome.REJECT:
                waiting.reject(logger, self.connection_errors, False)
                self._event("task-failed", waiting.delivery, exception="failed for good (dead-lettered)")
            else:
                waiting.ack(logger, self.connection_errors)
                runtime = round(time.monotonic() - waiting.received_at, 6)
                if outcome == Outcome.ACK and logger.isEnabledFor(logging.INFO):
                    delivery = waiting.delivery
                    logger.info(
                        LOG_SUCCEEDED, delivery.task_name, delivery.task_id, runtime, extra=delivery.log_fields()
                    )
                self._event("task-succeeded", waiting.delivery, runtime=runtime)
        self._schedule_flush()

    def _lost(self, key: int, batch: list[_Waiting], exc_info: Any) -> None:
        """The pool process died (or passed the hard time limit): every message goes back to its queue."""
        if self.in_flight.pop(key, None) is None:
            return
        exc = getattr(exc_info, "exception", exc_info)
        logger.error(
            "batch of %d lost (%s): requeued: %s",
            len(batch),
            exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}",
            ", ".join(f"{w.task.name}[{w.delivery.task_id}]" for w in batch),
        )
        for waiting in batch:
            waiting.reject(logger, self.connection_errors, True)
        self._schedule_flush()

    def _event(self, kind: str, delivery: Delivery, **fields: Any) -> None:
        if self.eventer is not None and self.eventer.enabled:
            self.eventer.send(kind, uuid=delivery.task_id, **fields)


def batching_strategy(task: EventConsumerTask, app: Celery, consumer: Any, **kwargs: Any):
    """Celery's hook (Task.Strategy): the handler of every message of `task` this worker receives."""
    batcher = Batcher.of(consumer, app)

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
        batcher.receive(task, message, ack, reject)

    return task_message_handler


# --- Pool process ---------------------------------------------------------------------------------


def run_batch(deliveries: list[Delivery]) -> list[str]:
    """In a pool process: handle the batch, task by task; one outcome per delivery, in order."""
    from ordering.celery import app

    outcomes: list[str] = [""] * len(deliveries)
    by_task: dict[str, list[int]] = {}
    for index, delivery in enumerate(deliveries):
        by_task.setdefault(delivery.task_name, []).append(index)
    messaging = settings.MESSAGING
    soft, hard = messaging["BATCH_SOFT_TIME_LIMIT_SECONDS"], messaging["BATCH_TIME_LIMIT_SECONDS"]
    with time_limits(soft=soft, hard=hard, size=len(deliveries)):
        for name, indexes in by_task.items():
            task = app.tasks[name]
            started = time.monotonic()
            with metrics.consumer_batches_in_progress(task=name).track_inprogress():
                task_outcomes = consume(task, [deliveries[i] for i in indexes])
            metrics.consumer_batch_observe(task=name, seconds=time.monotonic() - started)
            for index, outcome in zip(indexes, task_outcomes, strict=True):
                outcomes[index] = str(outcome)
    return outcomes


@contextmanager
def time_limits(*, soft: float | None, hard: float | None, size: int) -> Iterator[None]:
    """In a pool process, for one batch: the soft limit raises in it, the hard limit ends the process.

    SoftTimeLimitExceeded is raised wherever the batch is (the machinery retries what it had not
    finished). Past the hard limit the process exits at once; the worker sees it lost and puts
    the batch's messages back in their queue (task_reject_on_worker_lost), where the queue's
    delivery limit stops a message that does it every time. Both clocks stop with the batch.
    """

    def soft_limit_reached(signum: int, frame: object) -> None:
        logger.warning("soft time limit (%ss) exceeded by a batch of %d", soft, size)
        raise SoftTimeLimitExceeded()

    def hard_limit_reached() -> None:
        logger.error("hard time limit (%ss) exceeded by a batch of %d: its pool process exits", hard, size)
        os._exit(HARD_TIME_LIMIT_EXIT_CODE)

    previous = signal.signal(signal.SIGALRM, soft_limit_reached) if soft else None
    if soft:
        signal.setitimer(signal.ITIMER_REAL, soft)
    killer = threading.Timer(hard, hard_limit_reached) if hard else None
    if killer is not None:
        killer.daemon = True
        killer.start()
    try:
        yield
    finally:
        if soft:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if killer is not None:
            killer.cancel()


def _eta(delivery: Delivery) -> float | None:
    eta = delivery.headers.get("eta")
    if not eta:
        return None
    try:
        moment = maybe_iso8601(eta)
    except (ValueError, TypeError, AttributeError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
