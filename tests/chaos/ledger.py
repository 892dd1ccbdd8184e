"""The ledger: what the run sent, what the system recorded, and every promise it must have kept.

Counted from the database (orders, payments, the gateway's own charge and refund ledgers, outbox,
inbox, failed-task records) and from RabbitMQ (queue depths, dead-letter queues), after the drain.
A violation is any broken promise; the run exits non-zero if there is one.

Money is counted from the simulated gateway's ledgers (SimulatedCharge, SimulatedRefund), never
from billing's Payment rows: the gateway's side is what the buyer's bank statement would show,
and billing's own record of it is one of the things under test.
"""

import json
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from tests.chaos.cancels import NOT_CANCELABLE_CODE, CancelRequest
from tests.chaos.faults import BROKER_FAULTS, FaultContext, FaultRecord
from tests.chaos.load import OrderLoad, expected_status
from tests.chaos.system import ChaosEnvironment

# The cancellation contract's own words, not the core's sets: the ledger is an oracle, and an
# oracle that imported CANCELABLE_STATUSES would agree with a bug in it. These are the statuses a
# cancellation is refused for (409), and also the only ones an order may end in after a 202.
NOT_CANCELABLE = frozenset({"CANCELED_FRAUD", "PAYMENT_DECLINED", "CANCELED", "REFUNDED"})
# In a 202's body the order is CANCELING, or already over when the request was a repeat.
ACKNOWLEDGED = NOT_CANCELABLE | {"CANCELING"}


def subscription_sql() -> tuple[str, list[str]]:
    """VALUES list of (event_type, consumer) for every subscription, with its parameters."""
    from ordering import catalogue

    rows = ", ".join(["(%s, %s)"] * len(catalogue.SUBSCRIPTIONS))
    params = [value for s in catalogue.SUBSCRIPTIONS for value in (s.event_type, s.task_name)]
    return rows, params


def unconsumed_deliveries() -> int:
    """Published (event, subscriber) pairs without an inbox row: messages not yet consumed in effect."""
    from django.db import connection

    from ordering.messaging.models import OutboxEvent, ProcessedEvent

    rows, params = subscription_sql()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {OutboxEvent._meta.db_table} o "
            f"JOIN (VALUES {rows}) AS s(event_type, consumer) ON o.event_type = s.event_type "
            f"WHERE NOT EXISTS (SELECT 1 FROM {ProcessedEvent._meta.db_table} p "
            "WHERE p.consumer = s.consumer AND p.event_id = o.id)",
            params,
        )
        return cursor.fetchone()[0]


def pipeline_state() -> dict[str, int]:
    """What is still in flight, as the database sees it."""
    from billing.models import Payment, PaymentStatus
    from ordering.messaging.models import OutboxEvent
    from orders.models import Order, OrderStatus

    return {
        "pending_orders": Order.objects.filter(status=OrderStatus.PENDING).count(),
        # Not terminal: the cancellation waits for billing's void or refund.
        "canceling_orders": Order.objects.filter(status=OrderStatus.CANCELING).count(),
        "charging_payments": Payment.objects.filter(status=PaymentStatus.CHARGING).count(),
        "refunding_payments": Payment.objects.filter(status=PaymentStatus.REFUNDING).count(),
        "unpublished_outbox": OutboxEvent.objects.filter(published_at__isnull=True).count(),
        "unconsumed_deliveries": unconsumed_deliveries(),
    }


def queue_stats(environment: ChaosEnvironment) -> dict[str, dict[str, int]]:
    """Ready and unacknowledged messages of every queue of the run's vhost (rabbitmqctl)."""
    columns = ["name", "messages_ready", "messages_unacknowledged"]
    for attempt in range(30):  # the node is shared: someone may be restarting its app
        try:
            out = environment.rabbitmqctl("list_queues", "-q", "-p", environment.vhost, *columns, "--formatter", "json")
            break
        except (subprocess.SubprocessError, RuntimeError):
            if attempt == 29:
                raise
            time.sleep(2)
    out = out.stdout
    return {
        q["name"]: {"ready": int(q["messages_ready"] or 0), "unacked": int(q["messages_unacknowledged"] or 0)}
        for q in json.loads(out or "[]")
    }


def dead_letters_in_queues() -> list[dict]:
    from dataclasses import asdict as as_dict

    from ordering import catalogue
    from ordering.celery import app
    from ordering.messaging.replay import peek_dead_letters

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=3)
        return [as_dict(letter) for letter in peek_dead_letters(connection, catalogue.CONSUMER_QUEUES)]


# A fault's effect on the API is counted over the answers given from its start until this long
# after its end: a request killed with its web worker or database connection fails at that moment,
# and a fault that takes 0.1 s would otherwise have an empty window.
WINDOW_GRACE_SECONDS = 2.0


def http_window_share(requests: list, start: float, end: float) -> dict:
    """Answers (or failures) given between `start` and `end`: how many were not 2xx."""
    inside = [r for r in requests if r.finished_at and start <= r.finished_at < end]
    failed = [r for r in inside if r.status is None or not 200 <= r.status < 300]
    return {
        "requests": len(inside),
        "non_2xx": len(failed),
        "non_2xx_share": round(len(failed) / len(inside), 4) if inside else None,
    }


def cancel_window_failures(cancels: list[CancelRequest], start: float, end: float) -> dict:
    """Cancellation attempts answered (or failed) between `start` and `end`: how many got no answer or a 5xx.

    Per attempt, not per final answer: a retry that succeeded later does not hide a failure
    during a broker fault, when the API must keep answering (cancellations go through the outbox).
    """
    inside = [a for c in cancels for a in c.attempts if start <= a.ended_at < end]
    return {
        "attempts": len(inside),
        "failed": sum(1 for a in inside if a.status is None or a.status >= 500),
    }


def order_rows() -> dict[str, dict]:
    """Every order as the ledger needs it, by id, with its amount (price * quantity)."""
    from orders.models import Order

    rows = Order.objects.values("id", "status", "price", "quantity", "refund_reference", "cancel_requested_at")
    return {str(o["id"]): o | {"amount": o["price"] * o["quantity"]} for o in rows}


@dataclass
class GatewayMoney:
    """The simulated gateway's ledgers by order id (from the idempotency keys): successful entries only.

    A charge's key is `order-<id>`; a refund counts for the order of the charge it points at, and
    is listed in `refunds_without_capture` unless that charge succeeded, has the refund's amount
    and currency, and the refund's key is that order's (`refund-order-<id>`).
    """

    charges: int = 0  # every charge request the gateway recorded, declined ones too
    refunds: int = 0  # every refund request it recorded, refused ones too
    successful_charges: Counter = field(default_factory=Counter)
    successful_refunds: Counter = field(default_factory=Counter)
    charged: defaultdict = field(default_factory=lambda: defaultdict(Decimal))
    refunded: defaultdict = field(default_factory=lambda: defaultdict(Decimal))
    refund_references: defaultdict = field(default_factory=lambda: defaultdict(set))
    charged_at: dict = field(default_factory=dict)  # order id -> when its (last) successful charge was made
    refunds_without_capture: list[str] = field(default_factory=list)

    @property
    def refunded_total(self) -> Decimal:
        return sum(self.refunded.values(), Decimal("0"))

    def net(self, order_id: str) -> Decimal:
        return self.charged.get(order_id, Decimal("0")) - self.refunded.get(order_id, Decimal("0"))


def gateway_money() -> GatewayMoney:
    from billing.models import SimulatedCharge, SimulatedRefund

    money = GatewayMoney()
    for charge in SimulatedCharge.objects.values("idempotency_key", "amount", "succeeded", "created_at"):
        money.charges += 1
        if charge["succeeded"]:
            order_id = charge["idempotency_key"].removeprefix("order-")
            money.successful_charges[order_id] += 1
            money.charged[order_id] += charge["amount"]
            money.charged_at[order_id] = charge["created_at"]
    refunds = SimulatedRefund.objects.values(
        "idempotency_key",
        "amount",
        "currency",
        "succeeded",
        "reference",
        "charge__idempotency_key",
        "charge__amount",
        "charge__currency",
        "charge__succeeded",
    )
    for refund in refunds:
        money.refunds += 1
        if not refund["succeeded"]:
            continue
        # The order is the charge's: the money goes back where it came from, whatever the key says.
        order_id = refund["charge__idempotency_key"].removeprefix("order-")
        money.successful_refunds[order_id] += 1
        money.refunded[order_id] += refund["amount"]
        money.refund_references[order_id].add(refund["reference"])
        own_capture = (
            refund["charge__succeeded"]
            and refund["idempotency_key"] == f"refund-order-{order_id}"
            and refund["charge__amount"] == refund["amount"]
            and refund["charge__currency"] == refund["currency"]
        )
        if not own_capture:
            money.refunds_without_capture.append(order_id)
    money.refunds_without_capture.sort()
    return money


def charged_but_not_kept(*, orders: dict[str, dict], money: GatewayMoney) -> list[str]:
    """Orders with a successful charge that neither a PROCESSED order keeps nor a refund gave back.

    REFUNDED only says the charge was given back; money_violations checks that it was, in full.
    """
    return sorted(
        oid
        for oid in money.successful_charges
        if oid not in orders or orders[oid]["status"] not in ("PROCESSED", "REFUNDED")
    )


def wrong_outcomes(*, orders: dict[str, dict], cancelled: set[str]) -> list[str]:
    """Terminal orders whose status is not the one their amount calls for.

    Cancelled orders are left out: their outcome depends on timing. cancellation_violations holds
    them to what their answer and amount allow, and the stuck check to a terminal state.
    """
    from orders.models import TERMINAL_STATUSES

    return sorted(
        oid
        for oid, o in orders.items()
        if oid not in cancelled and o["status"] in TERMINAL_STATUSES and o["status"] != expected_status(o["amount"])
    )


def money_violations(*, orders: dict[str, dict], money: GatewayMoney) -> dict[str, list[str]]:
    """What the gateway's ledgers must show for every order, cancelled or not (order ids)."""

    def due(order_id: str) -> Decimal:
        order = orders.get(order_id)
        return order["amount"] if order and order["status"] == "PROCESSED" else Decimal("0")

    every_id = orders.keys() | money.charged.keys() | money.refunded.keys()
    return {
        "refunds without a successful charge of the same amount": money.refunds_without_capture,
        "orders refunded more than once": sorted(oid for oid, n in money.successful_refunds.items() if n > 1),
        "charged though CANCELED (nothing may be charged)": sorted(
            oid for oid, o in orders.items() if o["status"] == "CANCELED" and money.successful_charges[oid]
        ),
        "charges - refunds != amount if PROCESSED, else 0": sorted(
            oid for oid in every_id if money.net(oid) != due(oid)
        ),
        "REFUNDED without its refund's reference": sorted(
            oid
            for oid, o in orders.items()
            if o["status"] == "REFUNDED"
            and (not o["refund_reference"] or o["refund_reference"] not in money.refund_references.get(oid, ()))
        ),
    }


def cancellation_violations(*, cancels: list[CancelRequest], orders: dict[str, dict]) -> dict[str, list[str]]:
    """What every cancellation's answer promised about its order's final state (order ids)."""

    def final(cancel: CancelRequest) -> str | None:
        return orders.get(cancel.order_id, {}).get("status")

    def allowed(cancel: CancelRequest) -> set[str]:
        # Billing's own outcome may land first; otherwise the cancellation voids or refunds.
        expected = expected_status(orders[cancel.order_id]["amount"])
        return {expected, "CANCELED"} | ({"REFUNDED"} if expected == "PROCESSED" else set())

    acknowledged = [c for c in cancels if c.status == 202]
    return {
        "stuck cancellations (202, not terminal)": sorted(
            c.order_id for c in acknowledged if final(c) not in NOT_CANCELABLE and final(c) != "PROCESSED"
        ),
        "cancellations (202) that ended PROCESSED": sorted(c.order_id for c in acknowledged if final(c) == "PROCESSED"),
        "202 whose body is not CANCELING or over": sorted(
            c.order_id for c in acknowledged if c.order_status not in ACKNOWLEDGED
        ),
        "409 for an order that was not over": sorted(
            c.order_id for c in cancels if c.status == 409 and final(c) not in NOT_CANCELABLE
        ),
        "cancel answers outside the contract": sorted(
            c.order_id
            for c in cancels
            if c.status is not None
            and (c.status not in (202, 404, 409) or (c.status == 409 and c.code != NOT_CANCELABLE_CODE))
        ),
        "404 for an accepted order": sorted(c.order_id for c in cancels if c.status == 404),
        "cancelled orders in a status their amount rules out": sorted(
            c.order_id for c in cancels if final(c) in NOT_CANCELABLE | {"PROCESSED"} and final(c) not in allowed(c)
        ),
    }


def build_ledger(  # noqa: PLR0915
    *,
    ctx: FaultContext,
    load: OrderLoad,
    faults: list[FaultRecord],
    drain: dict,
    requested_faults: int,
    required_kinds: list[str],
) -> dict:
    from billing.models import Payment
    from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent
    from orders.models import TERMINAL_STATUSES

    requests = load.requests
    accepted = {r.order_id: r for r in requests if r.accepted}
    cancels = load.cancels.requests
    cancelled = {c.order_id for c in cancels}
    orders = order_rows()
    payments = {str(p["order_id"]): p for p in Payment.objects.values("order_id", "status")}
    money = gateway_money()
    successful_charges = money.successful_charges

    missing = sorted(oid for oid in accepted if oid not in orders)
    never_terminal = sorted(oid for oid in accepted if oid in orders and orders[oid]["status"] not in TERMINAL_STATUSES)
    stuck_orders = sorted(oid for oid, o in orders.items() if o["status"] not in TERMINAL_STATUSES)
    double_charged = sorted(oid for oid, n in successful_charges.items() if n > 1)
    charged_not_processed = charged_but_not_kept(orders=orders, money=money)
    processed_not_charged = sorted(
        oid for oid, o in orders.items() if o["status"] == "PROCESSED" and successful_charges[oid] == 0
    )
    wrong_outcome = wrong_outcomes(orders=orders, cancelled=cancelled)
    without_201 = sorted(oid for oid in orders if oid not in accepted)
    charging = sorted(oid for oid, p in payments.items() if p["status"] in ("CHARGING", "REFUNDING"))

    # Events: every published event consumed exactly once in effect by each of its subscribers.
    state = pipeline_state()
    outbox_total = OutboxEvent.objects.count()
    published = OutboxEvent.objects.filter(published_at__isnull=False).count()
    rows, params = subscription_sql()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {OutboxEvent._meta.db_table} o "
            f"JOIN (VALUES {rows}) AS s(event_type, consumer) ON o.event_type = s.event_type "
            "WHERE o.published_at IS NOT NULL",
            params,
        )
        deliveries_expected = cursor.fetchone()[0]
    processed_pairs = set(ProcessedEvent.objects.values_list("consumer", "event_id"))
    outbox_ids = {str(i) for i in OutboxEvent.objects.values_list("id", flat=True)}
    stale_ids = {m["event_id"] for s in ctx.stale for m in s["messages"]}
    stale_consumed = sum(
        1 for s in ctx.stale for m in s["messages"] if (m["consumer"], _uuid(m["event_id"])) in processed_pairs
    )
    stale_with_effect = sorted(
        s["order_id"] for s in ctx.stale if orders.get(s["order_id"], {}).get("status") != s["status"]
    )
    unexplained = sorted(
        f"{consumer}:{event_id}"
        for consumer, event_id in processed_pairs
        if str(event_id) not in outbox_ids and str(event_id) not in stale_ids
    )

    # Dead letters: exactly the injected poison messages, each identified, and nothing else.
    letters = dead_letters_in_queues()
    poison_ids = {p["task_id"] for p in ctx.poison}
    letter_ids = [letter["task_id"] for letter in letters]
    unexpected_letters = [letter for letter in letters if letter["task_id"] not in poison_ids]
    missing_poison = sorted(poison_ids - set(letter_ids))
    duplicate_letters = sorted(tid for tid, n in Counter(letter_ids).items() if n > 1)
    failure_records = list(DeadLetter.objects.values_list("task_id", "task_name"))
    from ordering.messaging import selectors

    unresolved_failures = sorted(
        d.task_id
        for d in DeadLetter.objects.all()
        if d.task_id not in poison_ids and not selectors.dead_letter_resolved(d)
    )

    queues = queue_stats(ctx.environment)
    left_in_queues = {
        name: q for name, q in queues.items() if not name.endswith(".dlq") and (q["ready"] or q["unacked"])
    }
    dlq_unacked = {name: q["unacked"] for name, q in queues.items() if name.endswith(".dlq") and q["unacked"]}

    # HTTP, overall and per fault window.
    status_counts = Counter(str(r.status) if r.status is not None else f"error:{r.error}" for r in requests)
    fault_rows = []
    for i, f in enumerate(faults):
        row = asdict(f)
        row["seconds"] = round(f.ended_at - f.started_at, 2)
        # Windows never overlap: an answer belongs to the latest fault that started before it.
        next_start = faults[i + 1].started_at if i + 1 < len(faults) else float("inf")
        window_end = min(f.ended_at + WINDOW_GRACE_SECONDS, next_start)
        row["http"] = http_window_share(requests, f.started_at, window_end)
        row["cancel_http"] = cancel_window_failures(cancels, f.started_at, window_end)
        fault_rows.append(row)
    by_kind = Counter(f.kind for f in faults if not f.error and "skipped" not in f.detail)
    broker_non_2xx = sum(
        r["http"]["non_2xx"] + r["cancel_http"]["failed"] for r in fault_rows if r["kind"] in BROKER_FAULTS
    )
    money_bad = money_violations(orders=orders, money=money)
    cancel_bad = cancellation_violations(cancels=cancels, orders=orders)

    violations = []

    def check(name: str, bad: object) -> None:
        if bad:
            violations.append(f"{name}: {bad if isinstance(bad, (int, str)) else len(bad)}")

    check("lost (accepted, missing)", missing)
    check("lost (accepted, never terminal)", never_terminal)
    check("stuck orders", stuck_orders)
    check("stuck payments (CHARGING or REFUNDING)", charging)
    check("unpublished outbox events", state["unpublished_outbox"])
    check("published deliveries not consumed", state["unconsumed_deliveries"])
    check("double-charged", double_charged)
    check("charged but neither PROCESSED nor REFUNDED", charged_not_processed)
    check("PROCESSED but not charged", processed_not_charged)
    check("wrong terminal status for the amount", wrong_outcome)
    check("stale events that changed an order", stale_with_effect)
    check("stale events not consumed", len(stale_ids) - stale_consumed)
    check("consumptions of unknown events", unexplained)
    check("dead letters that are not injected poison", unexpected_letters)
    check("injected poison not in a DLQ", missing_poison)
    check("dead letters present twice", duplicate_letters)
    check("unresolved task failures that are not poison", unresolved_failures)
    check("messages left in consumer queues", left_in_queues)
    check("unacked messages in DLQs", dlq_unacked)
    check("non-2xx answers during broker faults", broker_non_2xx)
    for name, bad in (money_bad | cancel_bad).items():
        check(name, bad)
    check("faults that failed to inject", [f for f in faults if f.error])
    check("accepted orders", 0 if accepted else "none")
    if not drain.get("drained"):
        violations.append(f"not drained after {drain.get('seconds')}s: {drain.get('state')}")
    if len(faults) < requested_faults:
        violations.append(f"faults injected {len(faults)} < {requested_faults} requested")
    missing_kinds = sorted(set(required_kinds) - set(by_kind))
    if missing_kinds:
        violations.append(f"fault kinds never injected: {', '.join(missing_kinds)}")

    return {
        "run_id": ctx.environment.run_id,
        "orders": {
            "requested": load.total,
            "sent": len(requests),
            "accepted_201": len(accepted),
            "in_database": len(orders),
            "in_database_without_201": len(without_201),
            "terminal_by_status": dict(Counter(o["status"] for o in orders.values())),
            "lost": len(missing) + len(never_terminal),
            "lost_ids": (missing + never_terminal)[:50],
            "stuck": len(stuck_orders) + len(charging),
            "stuck_ids": (stuck_orders + charging)[:50],
            "double_charged": len(double_charged),
            "double_charged_ids": double_charged[:50],
            "charged_but_not_processed": len(charged_not_processed),
            "charged_but_not_processed_ids": charged_not_processed[:50],
            "processed_but_not_charged": len(processed_not_charged),
            "wrong_outcome": len(wrong_outcome),
            "gateway_charges": money.charges,
            "gateway_successful_charges": sum(successful_charges.values()),
        },
        "cancellations": {
            "share": load.cancel_share,
            "planned": len(load.cancels.plan),
            "requested": len(cancels),
            "by_moment": dict(sorted(Counter(c.moment for c in cancels).items())),
            "by_answer": dict(sorted(Counter(c.outcome for c in cancels).items())),
            "answered_202": sum(1 for c in cancels if c.status == 202),
            "answered_409": sum(1 for c in cancels if c.status == 409),
            "answered_404": sum(1 for c in cancels if c.status == 404),
            "errors": sum(1 for c in cancels if c.status is None),
            "retried": sum(1 for c in cancels if len(c.attempts) > 1),
            "final_status_after_202": _final_statuses(cancels, orders, 202),
            "final_status_after_409": _final_statuses(cancels, orders, 409),
            "final_status_after_error": _final_statuses(cancels, orders, None),
            "gateway_refunds": money.refunds,
            "gateway_successful_refunds": sum(money.successful_refunds.values()),
            "refunded_total": str(money.refunded_total),
            # Not a violation (the refund follows), but a charge billing could have spared: the
            # cancellation was on the order before the gateway was asked to charge it.
            "charged_after_cancel_requested": sorted(
                oid
                for oid, at in money.charged_at.items()
                if orders.get(oid, {}).get("cancel_requested_at") and at > orders[oid]["cancel_requested_at"]
            ),
            "violations": {name: ids[:50] for name, ids in (money_bad | cancel_bad).items() if ids},
        },
        "events": {
            "recorded": outbox_total,
            "published": published,
            "unpublished": state["unpublished_outbox"],
            "deliveries_expected": deliveries_expected,
            "consumed_once_in_effect": deliveries_expected - state["unconsumed_deliveries"],
            "not_consumed": state["unconsumed_deliveries"],
            "duplicate_copies_injected": len(ctx.duplicates),
            "stale_events_injected": len(stale_ids),
            "stale_events_consumed_without_effect": stale_consumed if not stale_with_effect else 0,
            "unexplained_consumptions": len(unexplained),
        },
        "dead_letters": {
            "left": len(letters),
            "poison_injected": len(poison_ids),
            "letters": [
                {k: letter[k] for k in ("task_id", "dlq", "origin_queue", "task_name", "event_type", "death_reason")}
                | {"what": next((p["what"] for p in ctx.poison if p["task_id"] == letter["task_id"]), "UNEXPECTED")}
                for letter in letters
            ],
            "failure_records": len(failure_records),
            "unresolved_failures_not_poison": unresolved_failures[:50],
            "replays": ctx.replays,
        },
        "queues": queues,
        "unacked_left": sum(q["unacked"] for q in queues.values()),
        "http": {
            "by_status": dict(status_counts),
            "non_2xx_share": round(sum(1 for r in requests if r.status != 201) / len(requests), 4)
            if requests
            else None,
            "load_seconds": round(load.finished_at - load.started_at, 1) if load.finished_at else None,
            "rate_per_second": load.rate,
        },
        "faults": {"injected": len(faults), "by_kind": dict(sorted(by_kind.items())), "timeline": fault_rows},
        "drain": drain,
        "violations": violations,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _final_statuses(cancels: list[CancelRequest], orders: dict[str, dict], answer: int | None) -> dict[str, int]:
    """Final order statuses of the cancellations that got `answer` (None: no answer at all)."""
    counts = Counter(orders.get(c.order_id, {}).get("status", "MISSING") for c in cancels if c.status == answer)
    return dict(sorted(counts.items()))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def _uuid(value: str):
    import uuid

    return uuid.UUID(value)


def format_ledger(ledger: dict, started_at: float) -> str:
    """The ledger as the run prints it."""
    o, e, d, c = ledger["orders"], ledger["events"], ledger["dead_letters"], ledger["cancellations"]
    lines = [
        f"=== chaos ledger (run {ledger['run_id']}, {ledger['generated_at']}) ===",
        f"orders requested / sent / accepted (201)   {o['requested']} / {o['sent']} / {o['accepted_201']}",
        f"orders in database (without a 201)         {o['in_database']} ({o['in_database_without_201']})",
        "terminal by status                         "
        + ", ".join(f"{k} {v}" for k, v in sorted(o["terminal_by_status"].items())),
        f"LOST (accepted, missing or not terminal)   {o['lost']}",
        f"DOUBLE-CHARGED (> 1 successful charge)     {o['double_charged']}",
        f"CHARGED, NOT PROCESSED NOR REFUNDED        {o['charged_but_not_processed']}",
        f"processed but not charged                  {o['processed_but_not_charged']}",
        f"STUCK (not terminal, payment CHARGING/REFUNDING) {o['stuck']}",
        f"wrong terminal status for the amount       {o['wrong_outcome']}",
        f"gateway charges (successful)               {o['gateway_charges']} ({o['gateway_successful_charges']})",
        f"cancellations requested / 202 / 409 / errors {c['requested']} / {c['answered_202']} / "
        f"{c['answered_409']} / {c['errors']}" + (f" (404: {c['answered_404']})" if c["answered_404"] else ""),
        "    by moment                              " + _counts(c["by_moment"]),
        "    final status after 202                 " + _counts(c["final_status_after_202"]),
        "    final status after 409                 " + _counts(c["final_status_after_409"]),
        "    final status after no answer           " + _counts(c["final_status_after_error"]),
        f"gateway refunds (successful), total        {c['gateway_refunds']} ({c['gateway_successful_refunds']}), "
        f"{c['refunded_total']}",
        f"    charged after the cancel request       {len(c['charged_after_cancel_requested'])}",
        "cancellation and money checks             "
        + (" " + _counts({k: len(v) for k, v in c["violations"].items()}) if c["violations"] else " all kept"),
        f"events recorded / published / unpublished  {e['recorded']} / {e['published']} / {e['unpublished']}",
        f"deliveries expected / consumed once        {e['deliveries_expected']} / {e['consumed_once_in_effect']}",
        f"duplicate copies injected (no effect)      {e['duplicate_copies_injected']}",
        f"stale events injected / consumed, no effect {e['stale_events_injected']} / "
        f"{e['stale_events_consumed_without_effect']}",
        f"dead letters left / poison injected        {d['left']} / {d['poison_injected']}",
    ]
    for letter in d["letters"]:
        lines.append(
            f"    {letter['dlq']:<18} {letter['what']:<20} {letter['task_name']}[{letter['task_id']}] "
            f"({letter['death_reason']})"
        )
    lines.append(f"replays by the run                         {len(d['replays'])}")
    for replay in d["replays"]:
        lines.append(f"    {replay['why']}: {replay['summary']}")
    lines += [
        f"unacked messages left                      {ledger['unacked_left']}",
        "HTTP answers                               "
        + ", ".join(f"{k}: {v}" for k, v in sorted(ledger["http"]["by_status"].items())),
        f"faults injected                            {ledger['faults']['injected']}",
    ]
    for kind, n in ledger["faults"]["by_kind"].items():
        lines.append(f"    {kind:<28} {n}")
    lines.append(
        "fault timeline (t = since start; non-2xx = API answers to creates, cancel failed = cancellation attempts"
        " without an answer or with a 5xx, from fault start to 2 s after its end)"
    )
    for f in ledger["faults"]["timeline"]:
        http = f["http"]
        share = "n/a" if http["non_2xx_share"] is None else f"{http['non_2xx_share']:.1%}"
        lines.append(
            f"    t={f['started_at'] - started_at:7.1f}s {f['kind']:<26} {f['seconds']:5.1f}s  "
            f"non-2xx {http['non_2xx']}/{http['requests']} ({share})"
            + (f"  cancel failed {f['cancel_http']['failed']}/{f['cancel_http']['attempts']}")
            + (f"  ERROR {f['error']}" if f["error"] else "")
        )
    drain = ledger["drain"]
    lines.append(f"time to drain                              {drain.get('seconds')}s")
    verdict = (
        "OK: no violations" if not ledger["violations"] else "VIOLATIONS:\n    " + "\n    ".join(ledger["violations"])
    )
    lines.append(verdict)
    return "\n".join(lines)
