"""The benchmark's measurements: a rate step of the pipeline, the two ceilings, replay, a broker outage.

Each returns plain dicts (the JSON the run writes). Latencies are in milliseconds; CPU is
milliseconds per order (or per request, per chain) for each process type.
"""

import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.bench.load import OpenLoopLoad, Sent, closed_loop
from tests.bench.usage import TypeUsage, UsageMeter, host_cpu_seconds, read_process
from tests.chaos.load import order_fields

LOAD_GENERATOR = "load generator"
DRAIN_POLL_SECONDS = 0.25


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of `values` (seconds) in milliseconds (nearest rank)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000, 1)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(ordered[-1] * 1000, 1)}


class Meter:
    """CPU and peak memory of every process type, between two moments."""

    def __init__(self, trees: dict[str, int]) -> None:
        self.usage = UsageMeter(trees=trees, names={"postgresql": "postgres", "rabbitmq": "beam.smp"})

    def snapshot(self) -> dict:
        me = read_process_self()
        return {
            "types": {**self.usage.sample(), LOAD_GENERATOR: me},
            "host": host_cpu_seconds(),
            "at": time.monotonic(),
        }

    @staticmethod
    def difference(before: dict, after: dict, units: int) -> dict:
        """CPU ms per unit for each type, peak RSS (MB) of each, host busy share."""
        cpu = {}
        for kind, usage in after["types"].items():
            spent = usage.cpu_seconds - before["types"][kind].cpu_seconds
            cpu[kind] = round(spent * 1000 / units, 2) if units else None
        busy = after["host"][0] - before["host"][0]
        total = after["host"][1] - before["host"][1]
        return {
            "cpu_ms_per_unit": cpu,
            # The system's processes; the load generator is the client and is reported on its own.
            "cpu_ms_per_unit_total": (
                round(sum(v for k, v in cpu.items() if v is not None and k != LOAD_GENERATOR), 2) if units else None
            ),
            "peak_rss_mb": {kind: round(u.peak_rss_mb, 1) for kind, u in after["types"].items()},
            "host_busy_percent": round(100 * busy / total, 1) if total else None,
        }


def read_process_self() -> TypeUsage:
    import os

    me = read_process(os.getpid())
    assert me is not None
    return TypeUsage(cpu_seconds=me.cpu_seconds, peak_rss_mb=me.peak_rss_mb, processes=1)


def order_bodies(run_id: str, start: int, count: int, seed: int) -> list[bytes]:
    """Order requests as the chaos run sends them: ~90 % paid, 6 % declined, 4 % fraud, unique buyers."""
    rng = random.Random(seed)
    bodies = []
    for index in range(start, start + count):
        buyer, price = order_fields(rng, run_id, index)
        body = {"product_name": "bench item", "quantity": 1, "price": price, "buyer": buyer}
        bodies.append(json.dumps(body).encode())
    return bodies


@dataclass
class Pipeline:
    """What a step needs to know about the running system."""

    port: int
    token: str
    run_id: str
    meter: Meter
    log: Callable[[str], None]
    sent_so_far: int = 0
    drain_timeout: float = 120.0
    seed: int = 7
    history: list[dict] = field(default_factory=list)

    def bodies(self, count: int) -> list[bytes]:
        bodies = order_bodies(self.run_id, self.sent_so_far, count, self.seed + self.sent_so_far)
        self.sent_so_far += count
        return bodies

    def load(self, rate: float, count: int) -> OpenLoopLoad:
        def progress(done: int, total: int) -> None:
            self.log(f"  {rate:g}/s: {done} of {total} answered")

        return OpenLoopLoad(
            port=self.port, path="/api/orders/", token=self.token, bodies=self.bodies(count), rate=rate,
            progress=progress,
        )  # fmt: skip


def wait_terminal(ids: list[str], timeout: float) -> int:
    """Wait until every order in `ids` is terminal; returns how many are not."""
    from django.db import close_old_connections

    from orders.models import TERMINAL_STATUSES, Order

    deadline = time.monotonic() + timeout
    left = len(ids)
    while time.monotonic() < deadline:
        close_old_connections()
        left = len(ids) - Order.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES).count()
        if not left:
            return 0
        time.sleep(DRAIN_POLL_SECONDS)
    return left


def transactions_committed() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def pipeline_outcome(sent: list[Sent]) -> dict:
    """End-to-end latency, throughput and outbox lag of the accepted orders, from the database."""
    from ordering.messaging.models import OutboxEvent
    from orders.models import TERMINAL_STATUSES, Order

    ids = [s.order_id for s in sent if s.accepted]
    orders = list(Order.objects.filter(pk__in=ids).values("status", "created_at", "updated_at"))
    finished = [o for o in orders if o["status"] in TERMINAL_STATUSES]
    end_to_end = [(o["updated_at"] - o["created_at"]).total_seconds() for o in finished]
    span = None
    if finished:
        span = (max(o["updated_at"] for o in finished) - min(o["created_at"] for o in orders)).total_seconds()
    events = OutboxEvent.objects.filter(aggregate_id__in=ids, published_at__isnull=False).values_list(
        "created_at", "published_at"
    )
    lag = [(published - created).total_seconds() for created, published in events]
    statuses: dict[str, int] = {}
    for order in orders:
        statuses[order["status"]] = statuses.get(order["status"], 0) + 1
    return {
        "finished": len(finished),
        "finished_per_second": round(len(finished) / span, 1) if span else None,
        "end_to_end_ms": percentiles(end_to_end),
        "end_to_end_mean_ms": round(statistics.fmean(end_to_end) * 1000, 1) if end_to_end else None,
        "outbox_lag_ms": percentiles(lag),
        "stages_ms": stages(ids),
        "statuses": statuses,
    }


# Where the time of a paid order goes, from the timestamps each step writes (all server clocks).
# published_at is when the relay took the event; its publish and confirm fall in the next stage.
_STAGES_SQL = """
    SELECT c.created_at - o.created_at,
           c.published_at - c.created_at,
           p.created_at - c.published_at,
           p.updated_at - p.created_at,
           r.published_at - r.created_at,
           o.updated_at - r.published_at
      FROM orders_order o
      JOIN messaging_outboxevent c ON c.aggregate_id = o.id::text AND c.event_type = 'orders.order.created'
      JOIN billing_payment p ON p.order_id = o.id
      JOIN messaging_outboxevent r ON r.aggregate_id = o.id::text AND r.event_type = 'billing.payment.captured'
     WHERE o.id = ANY(%s::uuid[]) AND o.status = 'PROCESSED'
"""
STAGE_NAMES = (
    "web: order -> outbox row",
    "relay: committed -> taken",
    "relay publish + billing queue + fraud: taken -> payment opened",
    "billing: payment opened -> outcome",
    "relay: outcome committed -> taken",
    "relay publish + orders queue + update: taken -> order terminal",
)


def stages(ids: list[str]) -> dict[str, dict[str, float | None]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_STAGES_SQL, [ids])
        rows = cursor.fetchall()
    return {
        name: percentiles([row[i].total_seconds() for row in rows if row[i] is not None])
        for i, name in enumerate(STAGE_NAMES)
    }


def run_step(pipeline: Pipeline, rate: float, seconds: float, max_orders: int) -> dict:
    """One open-loop rate step: send, wait until every accepted order is terminal, measure."""
    count = max(1, min(max_orders, round(rate * seconds)))
    load = pipeline.load(rate, count)
    before = pipeline.meter.snapshot()
    xacts_before = transactions_committed()
    sent = load.run()
    answered_at = time.monotonic()
    ids = [s.order_id for s in sent if s.accepted]
    unfinished = wait_terminal(ids, pipeline.drain_timeout)
    after = pipeline.meter.snapshot()
    xacts = transactions_committed() - xacts_before
    outcome = pipeline_outcome(sent)
    errors: dict[str, int] = {}
    for s in sent:
        if not s.accepted:
            errors[s.error or f"HTTP {s.status}"] = errors.get(s.error or f"HTTP {s.status}", 0) + 1
    load_seconds = answered_at - sent[0].due
    usage = Meter.difference(before, after, outcome["finished"])
    step = {
        "offered_per_second": rate,
        "orders": count,
        "accepted": len(ids),
        "accepted_per_second": round(len(ids) / load_seconds, 1),
        "errors": errors,
        "unfinished": unfinished,
        "post_ms": percentiles([s.latency for s in sent if s.accepted]),
        **outcome,
        "transactions_per_order": round(xacts / outcome["finished"], 1) if outcome["finished"] else None,
        "cpu_ms_per_order": usage["cpu_ms_per_unit"],
        "cpu_ms_per_order_total": usage["cpu_ms_per_unit_total"],
        "peak_rss_mb": usage["peak_rss_mb"],
        "host_busy_percent": usage["host_busy_percent"],
    }
    step["sustained"] = sustained(step)
    return step


def sustained(step: dict) -> bool:
    """Every order accepted and finished, at the offered rate, with created->terminal p99 under 1 s."""
    p99 = step["end_to_end_ms"]["p99"]
    return (
        not step["errors"]
        and not step["unfinished"]
        and step["finished"] == step["orders"]
        and (step["finished_per_second"] or 0) >= 0.95 * step["offered_per_second"]
        and p99 is not None
        and p99 < 1000
    )


# --- Ceilings -------------------------------------------------------------------------------------


def drf_create_ceiling(port: int, token: str, meter: Meter, seconds: float) -> dict:
    """Closed loop on the trivial authenticated create: requests per second and CPU per request."""
    body = json.dumps({"note": "ping"}).encode()
    closed_loop(port=port, path="/bench/pings/", token=token, body=body, seconds=1.0)  # warm-up
    before = meter.snapshot()
    ok, errors, elapsed = closed_loop(port=port, path="/bench/pings/", token=token, body=body, seconds=seconds)
    after = meter.snapshot()
    usage = Meter.difference(before, after, ok)
    return {
        "per_second": round(ok / elapsed, 1),
        "requests": ok,
        "errors": errors,
        "cpu_ms_per_request": usage["cpu_ms_per_unit"],
        "cpu_ms_per_request_total": usage["cpu_ms_per_unit_total"],
    }


def fill_chain_queue(count: int) -> None:
    """Publish `count` first tasks of the no-op chain (confirmed) while no worker consumes them."""
    from ordering.celery import app
    from tests.bench.ceiling.tasks import FIRST_QUEUE

    with app.producer_or_acquire() as producer:
        for n in range(count):
            app.send_task("bench.chain.first", args=(n,), queue=FIRST_QUEUE, producer=producer)


def chain_ceiling(start_workers: Callable[[], None], meter_for: Callable[[], Meter], count: int) -> dict:
    """Start the chain's workers on a full first queue; chains per second until both queues are empty."""
    from tests.bench.ceiling.tasks import FIRST_QUEUE, SECOND_QUEUE
    from tests.bench.system import queue_depth

    fill_chain_queue(count)
    start_workers()
    meter = meter_for()
    before = meter.snapshot()
    started = None
    quiet = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        first, second = queue_depth(FIRST_QUEUE), queue_depth(SECOND_QUEUE)
        if started is None and first < count:
            started = time.monotonic()
        quiet = quiet + 1 if first == second == 0 else 0
        if quiet >= 2:
            break
        time.sleep(0.05)
    finished = time.monotonic()
    after = meter.snapshot()
    usage = Meter.difference(before, after, count)
    elapsed = finished - (started or finished)
    return {
        "per_second": round(count / elapsed, 1) if elapsed else None,
        "chains": count,
        "cpu_ms_per_chain": usage["cpu_ms_per_unit"],
        "cpu_ms_per_chain_total": usage["cpu_ms_per_unit_total"],
    }


# --- Replay -----------------------------------------------------------------------------------------


def replay_throughput(count: int) -> dict:
    """Dead-letter `count` real messages (rejected by a consumer), then replay them all, confirmed.

    No worker runs: the replayed messages wait in their queue and are purged afterwards.
    """
    from kombu import Consumer

    from ordering import catalogue
    from ordering.celery import app
    from ordering.messaging.publisher import connection_for_confirmed_batches
    from ordering.messaging.replay import ReplayCriteria, replay_dead_letters
    from ordering.messaging.topology import consumer_queue, declare_topology
    from tests.bench.system import queue_depth

    queue = catalogue.BILLING_QUEUE
    dlq = catalogue.dead_letter_queue(queue)
    with app.connection_for_write() as connection:
        declare_topology(connection)
        channel = connection.default_channel
        channel.queue_purge(queue)
        channel.queue_purge(dlq)
    with app.producer_or_acquire() as producer:
        for n in range(count):
            envelope = {"event_id": f"00000000-0000-4000-8000-{n:012d}", "event_type": catalogue.ORDER_CREATED}
            app.send_task(
                catalogue.BILLING_HANDLE_ORDER_CREATED, kwargs={"envelope": envelope}, queue=queue, producer=producer
            )
    rejected = 0
    with app.connection_for_write() as connection:
        channel = connection.channel()
        channel.basic_qos(0, 200, False)

        def reject(body: object, message) -> None:
            nonlocal rejected
            message.reject(requeue=False)
            rejected += 1

        with Consumer(channel, queues=[consumer_queue(queue)], callbacks=[reject], accept=["json"]):
            while rejected < count:
                connection.drain_events(timeout=10)
        channel.close()
    deadline = time.monotonic() + 30
    while queue_depth(dlq) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    with connection_for_confirmed_batches(app) as connection:
        started = time.monotonic()
        summary = replay_dead_letters(connection, ReplayCriteria(queues=(queue,)))
        elapsed = time.monotonic() - started
    back, left = queue_depth(queue), queue_depth(dlq)
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)
    return {
        "dead_letters": count,
        "replayed": len(summary.replayed),
        "failed": len(summary.failed),
        "seconds": round(elapsed, 2),
        "per_second": round(len(summary.replayed) / elapsed, 1) if elapsed else None,
        "back_in_queue": back,
        "left_in_dlq": left,
    }


# --- Broker outage --------------------------------------------------------------------------------


def broker_outage(
    pipeline: Pipeline,
    *,
    take_down: Callable[[], object],
    bring_back: Callable[[], object],
    rate: float,
    before: float,
    outage: float,
    after: float,
) -> dict:
    """Load at `rate` throughout; `take_down` a broker (the node, or one node of a cluster) for
    `outage` seconds, then `bring_back`; how fast it all recovers."""
    from orders.models import TERMINAL_STATUSES, Order

    count = round(rate * (before + outage + after))
    load = pipeline.load(rate, count)
    moments: dict[str, float] = {}

    def inject() -> None:
        time.sleep(before)
        pipeline.log(f"  outage: taking the broker down for {outage:g} s")
        moments["stopped"] = time.time()
        take_down()
        time.sleep(max(0.0, outage - (time.time() - moments["stopped"])))
        moments["bringing_back"] = time.time()
        bring_back()
        moments["returned"] = time.time()
        pipeline.log("  outage: the broker is back")

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    sent = load.run()
    injector.join()
    ids = [s.order_id for s in sent if s.accepted]
    unfinished = wait_terminal(ids, pipeline.drain_timeout + 120)
    orders = list(Order.objects.filter(pk__in=ids).values("status", "created_at", "updated_at"))
    stopped, returned = moments["stopped"], moments["returned"]
    done = [o for o in orders if o["status"] in TERMINAL_STATUSES]
    backlog = [o for o in done if o["created_at"].timestamp() < returned]
    drained_at = max((o["updated_at"].timestamp() for o in backlog), default=returned)
    calm = [(o["updated_at"] - o["created_at"]).total_seconds() for o in done if o["created_at"].timestamp() < stopped]
    normal = max(0.1, 2 * (percentiles(calm)["p99"] or 0) / 1000)
    # Latency is back to normal from the first second (of creation time, after the return) from
    # which on the p99 of every second stays under twice the p99 before the outage (100 ms at
    # least): one slow order in a second is not a backlog.
    after_return = _p99_ms_by_second(done, since=returned)
    slow = [second for second, p99 in after_return.items() if p99 > normal * 1000]
    normal_from = returned + (max(slow) + 1 if slow else 0)
    # Per second from the moment the broker went down: a cluster that lost one node is expected to
    # serve on while it is away (its queues elect other leaders), and to be disturbed again while
    # the node comes back and catches up.
    after_stop = _p99_ms_by_second(done, since=stopped)
    away, back = moments["bringing_back"] - stopped, returned - stopped

    def worst(start: float, end: float) -> float | None:
        return max((p99 for second, p99 in after_stop.items() if start <= second < end), default=None)

    return {
        "offered_per_second": rate,
        "outage_seconds": round(returned - stopped, 1),
        "accepted": len(ids),
        "errors": sum(1 for s in sent if not s.accepted),
        "lost_or_unfinished": unfinished,
        "backlog_orders": len(backlog),
        "backlog_drained_after_return_seconds": round(drained_at - returned, 1),
        "normal_latency_ms": round(normal * 1000, 1),
        "latency_normal_after_return_seconds": round(normal_from - returned, 1),
        "p99_ms_worst_in_first_second": worst(0, 1),
        "p99_ms_worst_while_away": worst(1, away),
        "p99_ms_worst_while_coming_back": worst(away, back),
        "p99_ms_worst_after_return": worst(back, 10**6),
        "away_seconds": round(away, 1),
        "p99_ms_by_second_after_stop": [p99 for second, p99 in after_stop.items() if second < 60],
        "p99_ms_by_second_after_return": [p99 for second, p99 in after_return.items() if second < 60],
    }


def _p99_ms_by_second(orders: list[dict], *, since: float) -> dict[int, float]:
    """created→terminal p99 (ms) of the orders created in each whole second from `since` on, in order."""
    seconds: dict[int, list[float]] = {}
    for o in orders:
        if (at := o["created_at"].timestamp()) >= since:
            seconds.setdefault(int(at - since), []).append((o["updated_at"] - o["created_at"]).total_seconds())
    return {second: percentiles(latencies)["p99"] or 0 for second, latencies in sorted(seconds.items())}
