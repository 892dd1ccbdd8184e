"""Order metrics: orders created, orders reaching a terminal status and how long it took, stuck orders.

Services count through the functions here, inside their transaction: the sample is written when
the transaction commits (`transaction.on_commit`), so rolled-back work is never counted. No query:
what is counted is on the order already.
"""

import time
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ordering.metrics import SECONDS_BUCKETS
from orders.models import Order
from orders.selectors import StuckState, stuck_order_counts

ORDERS_CREATED = Counter(
    "ordering_orders_created",
    "Orders accepted (PENDING, committed), by currency.",
    ["currency"],
)
ORDERS_TERMINAL = Counter(
    "ordering_orders_terminal",
    "Orders that reached a terminal status (committed), by status.",
    ["status"],
)
ORDER_COMPLETION_SECONDS = Histogram(
    "ordering_order_completion_seconds",
    "Time from an order's creation to its terminal status, by status.",
    ["status"],
    buckets=SECONDS_BUCKETS,
)


def order_count_created(*, order: Order) -> None:
    """`order` was created in the current transaction: count it once that commits."""
    counter = ORDERS_CREATED.labels(order.currency)
    transaction.on_commit(counter.inc)


def order_count_terminal(*, order: Order) -> None:
    """`order` reached its terminal status in the current transaction: count it and its latency on commit."""
    status, created_at = str(order.status), order.created_at

    def count() -> None:
        ORDERS_TERMINAL.labels(status).inc()
        ORDER_COMPLETION_SECONDS.labels(status).observe(max(0.0, time.time() - created_at.timestamp()))

    transaction.on_commit(count)


def _stuck_counts(*, older_than: timedelta) -> dict[str, int]:
    """Stuck orders by state, as label values: in_flight, dead_lettered, missing (0 included)."""
    counts = stuck_order_counts(older_than=older_than)
    return {state.name.lower(): counts[state.value] for state in StuckState}


class StuckOrdersCollector(Collector):
    """Scrape time, web only: orders PENDING longer than WATCHDOG["STUCK_AFTER_SECONDS"], by the watchdog's state."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        older_than = timedelta(seconds=settings.WATCHDOG["STUCK_AFTER_SECONDS"])
        family = GaugeMetricFamily(
            "ordering_orders_stuck",
            f"Orders stuck for longer than {older_than.total_seconds():g} s, by state.",
            labels=["state"],
        )
        for state, count in sorted(_stuck_counts(older_than=older_than).items()):
            family.add_metric([state], count)
        yield family
