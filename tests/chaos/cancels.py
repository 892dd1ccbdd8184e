"""Cancellations in the chaos load: a seeded share of accepted orders, each cancelled at a random moment.

The moment is what makes a cancellation interesting, so each planned one is drawn from three:
at once after the 201 (billing has probably not seen the order: it must void, never charge),
a fraction of a second later (the charge may be in flight: it must be refunded once, or never
made) and seconds later (the order is likely PROCESSED: it must be refunded in full). Timers
decide when a request is sent (this is a load generator); nothing waits on them for a result.

Unlike creates, a cancellation is retried, always with its own Idempotency-Key: a client that
lost its answer must be able to ask again, and a retry must not cancel twice. An answer that is
final (202, 409 order_not_cancelable, 404, any other 4xx) ends it; a network error, a 5xx or
409 idempotency_key_in_flight (the first attempt still running) is tried again after a back-off.
Every attempt is kept with the time it ended, for the ledger's fault windows.
"""

import heapq
import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import requests

# (name, lowest delay, highest delay) in seconds after the order's 201, drawn with equal chance.
# An order takes about 25 ms from created to terminal at this rate (README, benchmark), plus the
# chaos run's 20 ms of simulated gateway latency: "in_flight" lands around the charge, "late"
# well after it, unless a fault holds the order up.
MOMENTS: tuple[tuple[str, float, float], ...] = (
    ("immediate", 0.0, 0.0),
    ("in_flight", 0.005, 0.1),
    ("late", 1.0, 4.0),
)
DEFAULT_SHARE = 0.10
MAX_ATTEMPTS = 8
# Back-off before attempt n + 1 (n >= 1): 0.5, 1, 2, 4, 4, ... s: about 20 s in all, longer than a
# web worker's restart or a database restart, so an error left at the end is worth reading.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 4.0
NOT_CANCELABLE_CODE = "order_not_cancelable"
IN_FLIGHT_CODE = "idempotency_key_in_flight"


@dataclass(frozen=True)
class PlannedCancel:
    moment: str
    delay: float


def plan_cancellations(*, total: int, share: float, seed: int) -> dict[int, PlannedCancel]:
    """Which order indexes are cancelled, when: the same for the same seed, whatever the answers.

    A generator of its own (not the prices' one), so adding cancellations changes no order's price
    and a run with --cancel-share 0 sends exactly the orders it sent before cancellations existed.
    Every index draws the same numbers whether it is picked or not: the plan for the first N
    orders does not depend on the total.
    """
    rng = random.Random(f"chaos-cancel-{seed}")
    plan = {}
    for index in range(total):
        roll, which, where = rng.random(), rng.randrange(len(MOMENTS)), rng.random()
        if roll < share:
            name, low, high = MOMENTS[which]
            plan[index] = PlannedCancel(moment=name, delay=round(low + (high - low) * where, 3))
    return plan


@dataclass
class CancelAttempt:
    ended_at: float
    status: int | None
    error: str = ""
    code: str = ""


@dataclass
class CancelRequest:
    """One order's cancellation: its plan, every attempt, and the answer it ended with."""

    index: int
    order_id: str
    moment: str
    delay: float
    due_at: float
    idempotency_key: str
    attempts: list[CancelAttempt] = field(default_factory=list)
    # The final answer: HTTP status (None: no answer after every attempt), error, the 409's code,
    # the order's status in a 202's body, and when it was answered.
    status: int | None = None
    error: str = ""
    code: str = ""
    order_status: str = ""
    finished_at: float = 0.0

    @property
    def outcome(self) -> str:
        """'202', '409', '404', 'error' (no answer) or 'other:<status>'."""
        if self.status is None:
            return "error"
        if self.status in (202, 404, 409):
            return str(self.status)
        return f"other:{self.status}"


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return min(BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)


def retryable(attempt: CancelAttempt) -> bool:
    """No answer, a server error, or the same key still running: ask again with the same key."""
    if attempt.status is None or attempt.status >= 500:
        return True
    return attempt.status == 409 and attempt.code == IN_FLIGHT_CODE


class CancelLoad:
    """Sends the planned cancellations of accepted orders from a timer thread and a small pool.

    `order_accepted` (called by the order load on each 201) schedules the order's cancellation if
    it is planned; `close` says no more will come; the load is done when every scheduled
    cancellation has its final answer. `stop` is shared with the order load.
    """

    def __init__(
        self,
        *,
        orders_url: str,
        headers: dict[str, str],
        run_id: str,
        plan: dict[int, PlannedCancel],
        stop: threading.Event,
        concurrency: int = 8,
        timeout: float = 15.0,
    ) -> None:
        self.orders_url = orders_url
        self.headers = headers
        self.run_id = run_id
        self.plan = plan
        self.stop = stop
        self.timeout = timeout
        self.requests: list[CancelRequest] = []
        self._due: list[tuple[float, int, CancelRequest]] = []  # heap of the next attempt's time
        self._sequence = itertools.count()  # ties in the heap: never compare two requests
        self._outstanding = 0
        self._closed = False
        self._condition = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cancel")
        self._thread = threading.Thread(target=self._dispatch, name="cancel-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def order_accepted(self, *, index: int, order_id: str, answered_at: float) -> None:
        planned = self.plan.get(index)
        if planned is None:
            return
        request = CancelRequest(
            index=index,
            order_id=order_id,
            moment=planned.moment,
            delay=planned.delay,
            due_at=answered_at + planned.delay,
            idempotency_key=f"chaos-{self.run_id}-cancel-{index}",
        )
        with self._condition:
            self.requests.append(request)
            self._outstanding += 1
            self._push(request.due_at, request)

    def close(self) -> None:
        """No order will be accepted any more: the load ends once the scheduled ones are answered."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every scheduled cancellation has its final answer; False if `timeout` passed first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self) -> None:
        self.stop.set()
        with self._condition:
            self._condition.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def records(self) -> list[dict]:
        return [asdict(r) for r in self.requests]

    def _push(self, due: float, request: CancelRequest) -> None:
        heapq.heappush(self._due, (due, next(self._sequence), request))
        self._condition.notify_all()

    def _dispatch(self) -> None:
        with self._condition:
            while not self.stop.is_set():
                if not self._due:
                    if self._closed and self._outstanding == 0:
                        break
                    self._condition.wait(0.5)
                    continue
                wait = self._due[0][0] - time.time()
                if wait > 0:
                    self._condition.wait(min(wait, 0.5))
                    continue
                _, _, request = heapq.heappop(self._due)
                self._pool.submit(self._attempt, request)
        self._pool.shutdown(wait=not self.stop.is_set(), cancel_futures=self.stop.is_set())

    def _attempt(self, request: CancelRequest) -> None:
        attempt = self._send(request)
        with self._condition:
            request.attempts.append(attempt)
            if retryable(attempt) and len(request.attempts) < MAX_ATTEMPTS and not self.stop.is_set():
                self._push(time.time() + backoff(len(request.attempts)), request)
                return
            request.status, request.error, request.code = attempt.status, attempt.error, attempt.code
            request.finished_at = attempt.ended_at
            self._outstanding -= 1
            self._condition.notify_all()

    def _send(self, request: CancelRequest) -> CancelAttempt:
        try:
            response = requests.post(
                f"{self.orders_url}{request.order_id}/cancel/",
                json={},
                headers={**self.headers, "Idempotency-Key": request.idempotency_key},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            return CancelAttempt(ended_at=time.time(), status=None, error=type(exc).__name__)
        attempt = CancelAttempt(ended_at=time.time(), status=response.status_code)
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if response.status_code == 202:
                request.order_status = str(body.get("status", ""))
            else:
                attempt.code = str(body.get("code", ""))
        return attempt
