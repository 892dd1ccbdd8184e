"""The chaos load's cancellations against a stub HTTP server: the plan, the retries, the answers kept.

The stub answers each order's cancellation from a script (a 503, the same key still in flight,
then a 202...), so what the load does with each answer is seen without the system, a broker or
a database. The retries' back-off is shortened; the tests wait for the load to finish, never
for a time.
"""

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.chaos import cancels
from tests.chaos.cancels import CancelAttempt, CancelLoad, backoff, plan_cancellations, retryable
from tests.chaos.load import OrderLoad


class StubServer(ThreadingHTTPServer):
    """Answers POST /api/orders/ with 201 (order id = buyer's index) and each cancellation from `script`."""

    request_queue_size = 128  # the load's 32 threads at once: the default backlog of 5 refuses some
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.script: dict[str, list[tuple[int, dict]]] = {}
        self.cancels: dict[str, list[dict]] = defaultdict(list)  # order id -> each request's key and body
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StubHandler(BaseHTTPRequestHandler):
    server: StubServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
        parts = self.path.strip("/").split("/")  # api, orders[, id, cancel]
        if len(parts) == 2:
            order_id = body["buyer"].split("-")[-1].split("@")[0]
            self._answer(201, {"id": order_id, "status": "PENDING"})
            return
        order_id = parts[2]
        with self.server.lock:
            self.server.cancels[order_id].append({"key": self.headers.get("Idempotency-Key"), "body": body})
            script = self.server.script.get(order_id) or [(202, {"id": order_id, "status": "CANCELING"})]
            status, answer = script.pop(0) if len(script) > 1 else script[0]
        self._answer(status, answer)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows what matters
        pass


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def quick_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moments and back-off of milliseconds: the same shapes, a test that takes no seconds."""
    monkeypatch.setattr(cancels, "MOMENTS", (("immediate", 0.0, 0.0), ("in_flight", 0.001, 0.01), ("late", 0.02, 0.05)))
    monkeypatch.setattr(cancels, "BACKOFF_FIRST_SECONDS", 0.005)


def cancel_load(stub: StubServer, plan: dict) -> CancelLoad:
    load = CancelLoad(
        orders_url=f"{stub.base_url}/api/orders/", headers={}, run_id="t", plan=plan, stop=threading.Event()
    )
    load.start()
    return load


def test_the_plan_is_the_seeds_and_does_not_depend_on_the_total():
    long_plan = plan_cancellations(total=2000, share=0.1, seed=7)
    short_plan = plan_cancellations(total=1000, share=0.1, seed=7)

    assert long_plan == plan_cancellations(total=2000, share=0.1, seed=7)
    assert short_plan == {i: p for i, p in long_plan.items() if i < 1000}
    assert long_plan != plan_cancellations(total=2000, share=0.1, seed=8)
    assert 150 < len(long_plan) < 250
    assert {p.moment for p in long_plan.values()} == {"immediate", "in_flight", "late"}
    assert plan_cancellations(total=1000, share=0, seed=7) == {}


def test_no_answer_a_5xx_and_the_same_key_in_flight_are_retried_everything_else_is_final():
    assert retryable(CancelAttempt(ended_at=0, status=None, error="ConnectionError"))
    assert retryable(CancelAttempt(ended_at=0, status=503))
    assert retryable(CancelAttempt(ended_at=0, status=409, code="idempotency_key_in_flight"))
    assert not retryable(CancelAttempt(ended_at=0, status=409, code="order_not_cancelable"))
    assert not retryable(CancelAttempt(ended_at=0, status=202))
    assert not retryable(CancelAttempt(ended_at=0, status=404))
    assert [backoff(n) for n in range(1, 6)] == [0.005, 0.01, 0.02, 0.04, 0.08]


def test_a_cancellation_is_retried_with_its_own_key_until_a_final_answer(stub: StubServer):
    stub.script["a"] = [
        (503, {"detail": "database unavailable"}),
        (409, {"code": "idempotency_key_in_flight", "detail": "in flight"}),
        (202, {"id": "a", "status": "CANCELING"}),
    ]
    stub.script["b"] = [(409, {"code": "order_not_cancelable", "detail": "PAYMENT_DECLINED"})]
    plan = plan_cancellations(total=2, share=1, seed=1)
    load = cancel_load(stub, plan)

    load.order_accepted(index=0, order_id="a", answered_at=0.0)
    load.order_accepted(index=1, order_id="b", answered_at=0.0)
    load.close()

    assert load.join(timeout=30)
    a, b = sorted(load.requests, key=lambda r: r.order_id)
    assert [x.status for x in a.attempts] == [503, 409, 202]
    assert (a.outcome, a.order_status, a.code) == ("202", "CANCELING", "")
    assert {r["key"] for r in stub.cancels["a"]} == {a.idempotency_key}
    assert [r["body"] for r in stub.cancels["a"]] == [{}, {}, {}]
    assert (b.outcome, b.code, len(b.attempts)) == ("409", "order_not_cancelable", 1)
    assert a.idempotency_key != b.idempotency_key
    assert a.finished_at == a.attempts[-1].ended_at > 0


def test_a_cancellation_gives_up_after_its_attempts_and_keeps_the_last_answer(stub: StubServer):
    stub.script["c"] = [(500, {"detail": "boom"})]
    load = cancel_load(stub, plan_cancellations(total=1, share=1, seed=1))

    load.order_accepted(index=0, order_id="c", answered_at=0.0)
    load.close()

    assert load.join(timeout=30)
    (c,) = load.requests
    assert (c.outcome, len(c.attempts)) == ("other:500", cancels.MAX_ATTEMPTS)


def test_the_order_load_cancels_its_planned_share_of_accepted_orders_before_it_is_done(stub: StubServer):
    load = OrderLoad(base_url=stub.base_url, token="t", run_id="t", total=40, rate=2000, seed=3, cancel_share=0.5)
    planned = set(load.cancels.plan)

    load.start()

    assert load.join(timeout=30)
    assert [(r.status, r.error) for r in load.requests if not r.accepted] == []
    assert {c.index for c in load.cancels.requests} == planned
    assert set(stub.cancels) == {str(i) for i in planned}
    assert all(c.outcome == "202" for c in load.cancels.requests)
    assert all(c.finished_at <= load.finished_at for c in load.cancels.requests)
    assert len(load.cancel_records()) == len(planned)
