"""Pipeline benchmark (`make bench`): API latency, end-to-end latency and throughput, printed as numbers.

Runs the system as production does (gunicorn, two relays, two workers per queue) on its own
database and vhost, sends orders over HTTP at a fixed rate (open loop, 127.0.0.1 only), waits
until every accepted order is terminal, and prints:
- API latency of POST /api/orders/ (from the request's due time, so queueing counts);
- end-to-end latency: the order's created_at to its terminal status (both server clocks);
- throughput: orders accepted and finished per second.
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

from tests.chaos.run import setup_django
from tests.chaos.system import ChaosEnvironment, build_processes, free_port, wait_for_web
from tests.processes import ROOT

TARGET_END_TO_END_P95_SECONDS = 1.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"p50 {percentile(ms, 50):7.1f} ms   p95 {percentile(ms, 95):7.1f} ms   "
        f"p99 {percentile(ms, 99):7.1f} ms   max {max(ms, default=float('nan')):7.1f} ms   "
        f"mean {statistics.fmean(ms) if ms else float('nan'):7.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=600, help="orders to send (default %(default)s)")
    parser.add_argument("--rate", type=float, default=15.0, help="orders per second, open loop (default %(default)s)")
    parser.add_argument("--gateway-latency-ms", type=int, default=0, help="simulated gateway latency per charge")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the pipeline to finish")
    args = parser.parse_args(argv)

    environment = ChaosEnvironment()
    log_dir = Path(ROOT / "chaos-results" / f"bench-{environment.run_id}")
    log_dir.mkdir(parents=True, exist_ok=True)
    missing = environment.missing_services()
    if missing:
        print("the benchmark needs: " + "; ".join(missing), file=sys.stderr)
        return 2
    group = None
    try:
        environment.create()
        token = setup_django(environment.env())
        port = free_port()
        group = build_processes(environment, log_dir, port)
        for process in group.processes.values():
            process.env["SIMULATED_GATEWAY_LATENCY_MS"] = str(args.gateway_latency_ms)
        group.start_all()
        base_url = f"http://127.0.0.1:{port}"
        wait_for_web(base_url)
        return run(args, environment, token, base_url)
    finally:
        if group is not None:
            group.stop_all()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        environment.destroy()


def run(args: argparse.Namespace, environment: ChaosEnvironment, token: str, base_url: str) -> int:
    from orders.models import TERMINAL_STATUSES, Order
    from tests.chaos.load import OrderLoad

    load = OrderLoad(
        base_url=base_url, token=token, run_id=environment.run_id, total=args.orders, rate=args.rate, seed=7
    )
    load.start()
    load.join(timeout=load.planned_seconds + 120)
    accepted = [r for r in load.requests if r.accepted]
    ids = [r.order_id for r in accepted]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if Order.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES).count() == len(ids):
            break
        time.sleep(0.2)
    orders = list(Order.objects.filter(pk__in=ids).values("status", "created_at", "updated_at"))
    finished = [o for o in orders if o["status"] in TERMINAL_STATUSES]
    end_to_end = [(o["updated_at"] - o["created_at"]).total_seconds() for o in finished]
    first = min((o["created_at"] for o in orders), default=None)
    last = max((o["updated_at"] for o in finished), default=None)
    span = (last - first).total_seconds() if first and last else float("nan")
    load_seconds = load.finished_at - load.started_at

    print(f"\nbenchmark {time.strftime('%Y-%m-%d %H:%M %Z')}: {args.orders} orders at {args.rate:g}/s open loop, "
          f"gateway latency {args.gateway_latency_ms} ms")  # fmt: skip
    print(f"  accepted (201)        {len(accepted)} of {len(load.requests)}")
    print(f"  API POST latency      {summary([r.finished_at - r.due_at for r in accepted])}")
    print(f"  end-to-end (terminal) {summary(end_to_end)}")
    print(f"  finished              {len(finished)} of {len(accepted)} terminal")
    print(f"  throughput            {len(accepted) / load_seconds:7.1f} orders/s accepted, "
          f"{len(finished) / span:7.1f} orders/s finished (first created to last terminal: {span:.1f} s)")  # fmt: skip
    p95 = percentile(end_to_end, 95)
    verdict = "met" if p95 < TARGET_END_TO_END_P95_SECONDS else "MISSED"
    print(f"  target: end-to-end p95 < {TARGET_END_TO_END_P95_SECONDS:g} s: {verdict} ({p95:.3f} s)")
    return 0 if len(finished) == len(accepted) == len(load.requests) else 1


if __name__ == "__main__":
    sys.exit(main())
