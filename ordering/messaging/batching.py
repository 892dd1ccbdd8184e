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
  connection or the worker goes is never acked and RabbitMQ delivers it again;
- a pool process that dies or passes the hard time limit requeues its whole batch
  (`task_reject_on_worker_lost`); RabbitMQ marks those messages redelivered, and a redelivered
  message always runs alone, so a message that kills its worker is isolated from the others at
  once and reaches the queue's delivery limit by itself;
- the soft time limit applies to each batch and raises inside it; the machinery retries what it
  had not finished (ordering/messaging/consumer.py).

What this gives up, against Celery's per-message tracer: task signals, revocation and rate
limits (no consumer uses them), and cancelling a running batch when the broker connection
drops (its messages are redelivered and the inbox makes the second run a no-op).
"""

import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC
from functools import partial
from typing import Any

from celery import Celery
from celery.utils.time import maybe_iso8601
from django.conf import settings

from ordering.messaging.consumer import LOG_RECEIVED, Delivery, EventConsumerTask, Outcome, consume

logger = logging.getLogger(__name__)


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

    @property
    def tag(self) -> tuple[int, int]:
        """(channel, delivery tag): tags count per channel, and a reconnection starts a new one."""
        return id(self.message.channel), self.message.delivery_tag


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
        self.soft_time_limit = app.conf.task_soft_time_limit
        self.time_limit = app.conf.task_time_limit
        self.waiting: deque[_Waiting] = deque()
        # Received and neither acked nor rejected yet (waiting, held for an ETA, or in flight).
        self.unsettled: set[tuple[int, int]] = set()
        self.in_flight = 0
        self._flush_scheduled = False

    @classmethod
    def of(cls, consumer: Any, app: Celery) -> "Batcher":
        batcher = getattr(consumer, "_event_batcher", None)
        if batcher is None or batcher.pool is not consumer.pool:
            batcher = consumer._event_batcher = cls(consumer, app)
        return batcher

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
            logger.info(LOG_RECEIVED, task.name, delivery.task_id)
        self._event("task-received", delivery, name=task.name, retries=delivery.retries)
        waiting = _Waiting(task, message, ack, reject, delivery, time.monotonic())
        self.unsettled.add(waiting.tag)
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
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        if self.hub is None:
            self.flush()
        else:
            # After the event loop has read what the socket holds: those messages join the batch.
            self.hub.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        while self.waiting and self.in_flight < self.max_in_flight:
            batch = self._next_batch()
            if batch:
                self._apply(batch)

    def _next_batch(self) -> list[_Waiting]:
        first = self.waiting.popleft()
        batch = [first]
        if not first.redelivered:
            while self.waiting and len(batch) < self.batch_max and not self.waiting[0].redelivered:
                batch.append(self.waiting.popleft())
        # A message of a channel that has closed since (connection lost) cannot be acked any
        # more; RabbitMQ has already put it back in its queue for the next delivery.
        live = []
        for waiting in batch:
            if waiting.message.channel is not None and waiting.message.channel.is_open:
                live.append(waiting)
            else:
                self.unsettled.discard(waiting.tag)
        return live

    def _apply(self, batch: list[_Waiting]) -> None:
        self.in_flight += 1
        self.pool.apply_async(
            run_batch,
            args=([w.delivery for w in batch],),
            callback=partial(self._done, batch),
            error_callback=partial(self._lost, batch),
            timeout_callback=partial(self._timed_out, batch),
            soft_timeout=self.soft_time_limit,
            timeout=self.time_limit,
            correlation_id=batch[0].delivery.task_id,
        )

    # --- Main process: outcomes ---------------------------------------------------------------

    def _done(self, batch: list[_Waiting], outcomes: list[str]) -> None:
        self.in_flight -= 1
        acked = [w for w, outcome in zip(batch, outcomes, strict=True) if outcome != Outcome.REJECT]
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if outcome == Outcome.REJECT:
                self.unsettled.discard(waiting.tag)
                waiting.reject(logger, self.connection_errors, False)
                self._event("task-failed", waiting.delivery, exception="failed for good (dead-lettered)")
        self._ack(acked)
        for waiting in acked:
            self._event("task-succeeded", waiting.delivery, runtime=round(time.monotonic() - waiting.received_at, 6))
        self._schedule_flush()

    def _ack(self, batch: list[_Waiting]) -> None:
        """Ack the batch's messages: with one `multiple` ack when that acks exactly these."""
        if not batch:
            return
        tags = {w.tag for w in batch}
        self.unsettled -= tags
        last = max(batch, key=lambda w: w.tag)
        channel = last.tag[0]
        # multiple=True acks every unacked delivery up to `last` on its channel: right only if
        # none of them is still waiting or in flight elsewhere.
        if not any(c == channel and tag < last.tag[1] for c, tag in self.unsettled):
            last.ack(logger, self.connection_errors, True)
            return
        for waiting in batch:
            waiting.ack(logger, self.connection_errors)

    def _lost(self, batch: list[_Waiting], exc_info: Any) -> None:
        """The pool process died (or passed the hard time limit): every message goes back to its queue."""
        self.in_flight -= 1
        exc = getattr(exc_info, "exception", exc_info)
        logger.error(
            "batch of %d lost (%s: %s): requeued: %s",
            len(batch),
            type(exc).__name__,
            exc,
            ", ".join(f"{w.task.name}[{w.delivery.task_id}]" for w in batch),
        )
        for waiting in batch:
            self.unsettled.discard(waiting.tag)
            waiting.reject(logger, self.connection_errors, True)
        self._schedule_flush()

    def _timed_out(self, batch: list[_Waiting], soft: bool, timeout: float) -> None:
        if soft:
            logger.warning("soft time limit (%ss) exceeded by a batch of %d", timeout, len(batch))
        else:
            logger.error("hard time limit (%ss) exceeded by a batch of %d: its process is killed", timeout, len(batch))

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
    for name, indexes in by_task.items():
        task = app.tasks[name]
        for index, outcome in zip(indexes, consume(task, [deliveries[i] for i in indexes]), strict=True):
            outcomes[index] = str(outcome)
    return outcomes


def _eta(delivery: Delivery) -> float | None:
    eta = delivery.headers.get("eta")
    if not eta:
        return None
    try:
        moment = maybe_iso8601(eta)
    except (ValueError, TypeError, AttributeError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
