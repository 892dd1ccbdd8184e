"""Open-loop order load over the HTTP API: a fixed rate, a bounded count and time, 127.0.0.1 only.

Open loop: request i is due at start + i / rate whatever the answers to earlier requests were,
so a slow or failing server does not slow the load down (latency counts from the due time).
Requests are never retried: a client that did not get its 201 does not know whether the order
exists, and the ledger checks those orders too. A seeded share of the accepted orders is then
cancelled (tests/chaos/cancels.py); the load is done when every cancellation has its answer.
"""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from decimal import Decimal

import requests

from tests.chaos.cancels import DEFAULT_SHARE, CancelLoad, plan_cancellations

# Outcomes the pipeline must reach for an amount (settings defaults, which the run keeps).
DECLINE_ABOVE = Decimal("5000.00")
FRAUD_ABOVE = Decimal("10000.00")


def expected_status(amount: Decimal) -> str:
    if amount > FRAUD_ABOVE:
        return "CANCELED_FRAUD"
    if amount > DECLINE_ABOVE:
        return "PAYMENT_DECLINED"
    return "PROCESSED"


@dataclass
class OrderRequest:
    index: int
    buyer: str
    price: str
    due_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    status: int | None = None
    error: str = ""
    order_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 201 and self.order_id is not None


def order_fields(rng: random.Random, run_id: str, index: int) -> tuple[str, str]:
    """Buyer (unique per order, so fraud's velocity rule stays out of the way) and a price.

    About 90 % are paid, 6 % declined by the gateway (> 5,000) and 4 % blocked by fraud (> 10,000).
    """
    roll = rng.random()
    if roll < 0.04:
        price = rng.uniform(10000.01, 20000)
    elif roll < 0.10:
        price = rng.uniform(5000.01, 9999.99)
    else:
        price = rng.uniform(1, 500)
    return f"chaos-{run_id}-{index}@example.com", f"{price:.2f}"


class OrderLoad:
    """Sends `total` orders at `rate` per second from a thread pool; `start()` returns at once."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        run_id: str,
        total: int,
        rate: float,
        concurrency: int = 32,
        timeout: float = 15.0,
        seed: int = 0,
        cancel_share: float = DEFAULT_SHARE,
    ) -> None:
        if not base_url.startswith("http://127.0.0.1:"):
            raise ValueError("the chaos load only talks to 127.0.0.1")
        self.url = f"{base_url}/api/orders/"
        self.headers = {"Authorization": f"Token {token}"}
        self.total = total
        self.rate = rate
        self.timeout = timeout
        self.requests: list[OrderRequest] = []
        self.stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._schedule, name="load-scheduler", daemon=True)
        rng = random.Random(seed)
        self._fields = [order_fields(rng, run_id, i) for i in range(total)]
        self.cancel_share = cancel_share
        self.cancels = CancelLoad(
            orders_url=self.url,
            headers=self.headers,
            run_id=run_id,
            plan=plan_cancellations(total=total, share=cancel_share, seed=seed),
            stop=self.stop,
            timeout=timeout,
        )
        self.started_at = 0.0
        self.finished_at = 0.0

    @property
    def planned_seconds(self) -> float:
        return self.total / self.rate

    def start(self) -> None:
        self.started_at = time.time()
        self.cancels.start()
        self._thread.start()

    def _schedule(self) -> None:
        for index, (buyer, price) in enumerate(self._fields):
            due = self.started_at + index / self.rate
            delay = due - time.time()
            if delay > 0 and self.stop.wait(delay):
                break
            if self.stop.is_set():
                break
            request = OrderRequest(index=index, buyer=buyer, price=price, due_at=due)
            self.requests.append(request)
            self._pool.submit(self._send, request)
        self._pool.shutdown(wait=True)
        self.cancels.close()
        self.cancels.join()
        self.finished_at = time.time()

    def _send(self, request: OrderRequest) -> None:
        request.started_at = time.time()
        try:
            response = requests.post(
                self.url,
                json={"product_name": "chaos item", "quantity": 1, "price": request.price, "buyer": request.buyer},
                headers=self.headers,
                timeout=self.timeout,
            )
            request.status = response.status_code
            if response.status_code == 201:
                request.order_id = response.json()["id"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            request.error = type(exc).__name__
        request.finished_at = time.time()
        if request.accepted:
            self.cancels.order_accepted(index=request.index, order_id=request.order_id, answered_at=request.finished_at)

    def join(self, timeout: float) -> bool:
        """Wait until every request (cancellations too) was answered or failed; False if `timeout` passed first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self) -> None:
        self.stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.cancels.abort()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def records(self) -> list[dict]:
        return [asdict(r) for r in self.requests]

    def cancel_records(self) -> list[dict]:
        return self.cancels.records()
