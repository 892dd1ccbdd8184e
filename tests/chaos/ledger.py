"""The ledger: what the run sent, what the system recorded, and every promise it must have kept.

Counted from the database (orders, payments, the gateway's own charge ledger, outbox, inbox,
failed-task records) and from RabbitMQ (queue depths, dead-letter queues), after the drain.
A violation is any broken promise; the run exits non-zero if there is one.
"""

import json
import subprocess
import time
from collections import Counter
from dataclasses import asdict
from decimal import Decimal

from tests.chaos.faults import BROKER_FAULTS, FaultContext, FaultRecord
from tests.chaos.load import OrderLoad, expected_status


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
        "charging_payments": Payment.objects.filter(status=PaymentStatus.CHARGING).count(),
        "unpublished_outbox": OutboxEvent.objects.filter(published_at__isnull=True).count(),
        "unconsumed_deliveries": unconsumed_deliveries(),
    }


def queue_stats(vhost: str) -> dict[str, dict[str, int]]:
    """Ready and unacknowledged messages of every queue of the vhost (rabbitmqctl)."""
    columns = ["name", "messages_ready", "messages_unacknowledged"]
    command = ["rabbitmqctl", "list_queues", "-q", "-p", vhost, *columns, "--formatter", "json"]
    for attempt in range(30):  # the node is shared: someone may be restarting its app
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or attempt == 29:
            break
        time.sleep(2)
    result.check_returncode()
    out = result.stdout
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


def build_ledger(  # noqa: PLR0915
    *,
    ctx: FaultContext,
    load: OrderLoad,
    faults: list[FaultRecord],
    drain: dict,
    requested_faults: int,
    required_kinds: list[str],
) -> dict:
    from billing.models import Payment, SimulatedCharge
    from ordering.messaging.models import DeadLetter, OutboxEvent, ProcessedEvent
    from orders.models import TERMINAL_STATUSES, Order

    requests = load.requests
    accepted = {r.order_id: r for r in requests if r.accepted}
    orders = {str(o["id"]): o for o in Order.objects.values("id", "status", "price", "quantity")}
    payments = {str(p["order_id"]): p for p in Payment.objects.values("order_id", "status")}
    successful_charges = Counter(
        key.removeprefix("order-")
        for key in SimulatedCharge.objects.filter(succeeded=True).values_list("idempotency_key", flat=True)
    )
    charges_total = SimulatedCharge.objects.count()

    missing = sorted(oid for oid in accepted if oid not in orders)
    never_terminal = sorted(oid for oid in accepted if oid in orders and orders[oid]["status"] not in TERMINAL_STATUSES)
    stuck_orders = sorted(oid for oid, o in orders.items() if o["status"] not in TERMINAL_STATUSES)
    double_charged = sorted(oid for oid, n in successful_charges.items() if n > 1)
    charged_not_processed = sorted(
        oid for oid in successful_charges if oid not in orders or orders[oid]["status"] != "PROCESSED"
    )
    processed_not_charged = sorted(
        oid for oid, o in orders.items() if o["status"] == "PROCESSED" and successful_charges[oid] == 0
    )
    wrong_outcome = sorted(
        oid
        for oid, o in orders.items()
        if o["status"] in TERMINAL_STATUSES and o["status"] != expected_status(Decimal(o["price"]) * o["quantity"])
    )
    without_201 = sorted(oid for oid in orders if oid not in accepted)
    charging = sorted(oid for oid, p in payments.items() if p["status"] == "CHARGING")

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

    queues = queue_stats(ctx.environment.vhost)
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
        row["http"] = http_window_share(requests, f.started_at, min(f.ended_at + WINDOW_GRACE_SECONDS, next_start))
        fault_rows.append(row)
    by_kind = Counter(f.kind for f in faults if not f.error and "skipped" not in f.detail)
    broker_non_2xx = sum(r["http"]["non_2xx"] for r in fault_rows if r["kind"] in BROKER_FAULTS)

    violations = []

    def check(name: str, bad: object) -> None:
        if bad:
            violations.append(f"{name}: {bad if isinstance(bad, (int, str)) else len(bad)}")

    check("lost (accepted, missing)", missing)
    check("lost (accepted, never terminal)", never_terminal)
    check("stuck orders", stuck_orders)
    check("stuck payments (CHARGING)", charging)
    check("unpublished outbox events", state["unpublished_outbox"])
    check("published deliveries not consumed", state["unconsumed_deliveries"])
    check("double-charged", double_charged)
    check("charged but not PROCESSED", charged_not_processed)
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
            "gateway_charges": charges_total,
            "gateway_successful_charges": sum(successful_charges.values()),
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


def _uuid(value: str):
    import uuid

    return uuid.UUID(value)


def format_ledger(ledger: dict, started_at: float) -> str:
    """The ledger as the run prints it."""
    o, e, d = ledger["orders"], ledger["events"], ledger["dead_letters"]
    lines = [
        f"=== chaos ledger (run {ledger['run_id']}, {ledger['generated_at']}) ===",
        f"orders requested / sent / accepted (201)   {o['requested']} / {o['sent']} / {o['accepted_201']}",
        f"orders in database (without a 201)         {o['in_database']} ({o['in_database_without_201']})",
        "terminal by status                         "
        + ", ".join(f"{k} {v}" for k, v in sorted(o["terminal_by_status"].items())),
        f"LOST (accepted, missing or not terminal)   {o['lost']}",
        f"DOUBLE-CHARGED (> 1 successful charge)     {o['double_charged']}",
        f"CHARGED BUT NOT PROCESSED                  {o['charged_but_not_processed']}",
        f"processed but not charged                  {o['processed_but_not_charged']}",
        f"STUCK (not terminal, payment CHARGING)     {o['stuck']}",
        f"wrong terminal status for the amount       {o['wrong_outcome']}",
        f"gateway charges (successful)               {o['gateway_charges']} ({o['gateway_successful_charges']})",
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
    lines.append("fault timeline (t = since start; non-2xx = API answers from fault start to 2 s after its end)")
    for f in ledger["faults"]["timeline"]:
        http = f["http"]
        share = "n/a" if http["non_2xx_share"] is None else f"{http['non_2xx_share']:.1%}"
        lines.append(
            f"    t={f['started_at'] - started_at:7.1f}s {f['kind']:<26} {f['seconds']:5.1f}s  "
            f"non-2xx {http['non_2xx']}/{http['requests']} ({share})" + (f"  ERROR {f['error']}" if f["error"] else "")
        )
    drain = ledger["drain"]
    lines.append(f"time to drain                              {drain.get('seconds')}s")
    verdict = (
        "OK: no violations" if not ledger["violations"] else "VIOLATIONS:\n    " + "\n    ".join(ledger["violations"])
    )
    lines.append(verdict)
    return "\n".join(lines)
