"""The faults the chaos run injects, each a function of the run's context, and their schedule.

Every fault is logged with its start and end time. A fault that stops something brings it back
before it returns, in `finally`, also when the run is interrupted; a killed process is started
again as a supervisor would (the gunicorn master and the Celery main process respawn their own
children; the run restarts main processes and relays).
"""

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import psutil

from tests.chaos.system import RETRY_BUDGET_SECONDS, WEB_WORKERS, WORKER_CONCURRENCY, ChaosEnvironment, SharedServices
from tests.processes import ROOT, ManagedProcess, ProcessGroup

DUPLICATES_PER_FAULT = 5
SHORT_OUTAGE_SECONDS = 2.0
LONG_OUTAGE_SECONDS = RETRY_BUDGET_SECONDS + 5.0


@dataclass
class FaultRecord:
    kind: str
    started_at: float
    ended_at: float = 0.0
    detail: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class FaultContext:
    """What a fault may touch, and what it leaves for the ledger to check."""

    environment: ChaosEnvironment
    group: ProcessGroup
    services: SharedServices
    rng: random.Random
    stop: threading.Event
    log: Callable[[str], None]
    poison: list[dict] = field(default_factory=list)
    stale: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    replays: list[dict] = field(default_factory=list)

    def processes(self, prefix: str) -> list[ManagedProcess]:
        return [p for name, p in self.group.processes.items() if name.startswith(prefix)]

    def workers(self) -> list[ManagedProcess]:
        return self.processes("billing-") + self.processes("orders-")

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise KeyboardInterrupt("chaos run interrupted")


def _wait_for_children(process: ManagedProcess, count: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [c for c in process.children() if c.status() != psutil.STATUS_ZOMBIE]
        if len(alive) >= count:
            return len(alive)
        time.sleep(0.1)
    raise TimeoutError(f"{process.name} has not respawned its children after {timeout}s")


# --- Process crashes ---------------------------------------------------------------------------


def kill_pool_child(ctx: FaultContext) -> dict:
    """SIGKILL one Celery pool process; its main process starts a new one (reject_on_worker_lost)."""
    candidates = [w for w in ctx.workers() if w.children()]
    worker = ctx.rng.choice(candidates)
    child = ctx.rng.choice(worker.children())
    child.send_signal(signal.SIGKILL)
    _wait_for_children(worker, WORKER_CONCURRENCY)
    return {"worker": worker.name, "pid": child.pid}


def kill_worker(ctx: FaultContext) -> dict:
    """SIGKILL a Celery worker's main process; what is left of its group dies as under systemd."""
    worker = ctx.rng.choice(ctx.workers())
    pid = worker.pid
    os.kill(pid, signal.SIGKILL)
    ctx.sleep(1.0)  # orphaned pool processes may still finish what they were doing
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    worker.popen.wait(timeout=10)
    worker.start()
    return {"worker": worker.name, "pid": pid, "new_pid": worker.pid}


def kill_relay(ctx: FaultContext) -> dict:
    """SIGKILL one of the two outbox relays (maybe between confirm and mark), then restart it."""
    relay = ctx.rng.choice(ctx.processes("relay-"))
    pid = relay.pid
    os.kill(pid, signal.SIGKILL)
    relay.popen.wait(timeout=10)
    relay.start()
    return {"relay": relay.name, "pid": pid, "new_pid": relay.pid}


def kill_web_worker(ctx: FaultContext) -> dict:
    """SIGKILL one gunicorn worker (requests in flight on it fail); the master boots a new one."""
    web = ctx.group["web"]
    child = ctx.rng.choice(web.children())
    child.send_signal(signal.SIGKILL)
    time.sleep(0.5)
    _wait_for_children(web, WEB_WORKERS)
    return {"pid": child.pid}


# --- Broker and database -----------------------------------------------------------------------


def broker_restart(ctx: FaultContext) -> dict:
    """rabbitmqctl stop_app, a few seconds down, start_app (every vhost: the node is shared)."""
    down = round(ctx.rng.uniform(2, 5), 1)
    try:
        ctx.services.broker_stop()
        ctx.sleep(down)
    finally:
        ctx.services.broker_start()
    return {"down_seconds": down}


def broker_close_connections(ctx: FaultContext) -> dict:
    """rabbitmqctl close_all_connections for the run's vhost: every client reconnects."""
    out = ctx.environment.rabbitmqctl(
        "close_all_connections", "--vhost", ctx.environment.vhost, "chaos: connections closed"
    )
    return {"output": out.stdout.strip().splitlines()[-1:] or ""}


# --- Nodes of a RabbitMQ cluster (--cluster) ---------------------------------------------------


def _queue_leaders(ctx: FaultContext) -> dict[str, str]:
    """Which node leads each queue of the system now (not Celery's own delay queues)."""
    from ordering import catalogue

    assert ctx.environment.cluster is not None
    ours = {*catalogue.CONSUMER_QUEUES, *map(catalogue.dead_letter_queue, catalogue.CONSUMER_QUEUES)}
    ours.add(catalogue.MAINTENANCE_QUEUE)
    return {q["name"]: q["leader"] for q in ctx.environment.cluster.queues(ctx.environment.vhost) if q["name"] in ours}


def _node_loss(ctx: FaultContext, n: int, *, how: str) -> dict:
    """Take node `n` down (SIGKILL, or stop_app: its connections cut, the VM up), a few seconds, back.

    Records which queues it led, how long the cluster took to elect another leader for billing's
    queue, and how long the node took to come back.
    """
    from ordering import catalogue

    cluster = ctx.environment.cluster
    assert cluster is not None
    led = sorted(name for name, leader in _queue_leaders(ctx).items() if leader == cluster.node(n))
    down = round(ctx.rng.uniform(3, 6), 1)
    detail: dict = {"node": cluster.node(n), "how": how, "led": led, "down_seconds": down}
    started = time.monotonic()
    try:
        if how == "kill":
            detail["pid"] = ctx.services.node_kill(n)
        else:
            ctx.services.node_stop_app(n)
        if catalogue.BILLING_QUEUE in led:
            new_leader = cluster.wait_for_leader(ctx.environment.vhost, catalogue.BILLING_QUEUE, not_on=n)
            detail["new_leader"] = cluster.node(new_leader)
            detail["election_seconds"] = round(time.monotonic() - started, 1)
        ctx.sleep(max(0.0, down - (time.monotonic() - started)))
    finally:
        back = time.monotonic()
        ctx.services.nodes_start()
        detail["restart_seconds"] = round(time.monotonic() - back, 1)
    return detail


def node_kill_leader(ctx: FaultContext) -> dict:
    """SIGKILL the node that leads billing's queue: a new leader is elected, its clients reconnect."""
    from ordering import catalogue

    cluster = ctx.environment.cluster
    assert cluster is not None
    return _node_loss(ctx, cluster.leader(ctx.environment.vhost, catalogue.BILLING_QUEUE), how="kill")


def node_kill(ctx: FaultContext) -> dict:
    """SIGKILL a node that does not lead billing's queue (it may lead another one, and holds replicas)."""
    from ordering import catalogue

    cluster = ctx.environment.cluster
    assert cluster is not None
    leader = cluster.leader(ctx.environment.vhost, catalogue.BILLING_QUEUE)
    return _node_loss(ctx, ctx.rng.choice([n for n in cluster.nodes if n != leader]), how="kill")


def node_stop_app(ctx: FaultContext) -> dict:
    """rabbitmqctl stop_app on a random node while clients are connected to it, then start_app."""
    cluster = ctx.environment.cluster
    assert cluster is not None
    return _node_loss(ctx, ctx.rng.choice(list(cluster.nodes)), how="stop_app")


def db_terminate_backends(ctx: FaultContext) -> dict:
    """pg_terminate_backend of every connection to the run's database (web, relays, workers)."""
    return {"terminated": ctx.environment.terminate_backends()}


def db_restart(ctx: FaultContext) -> dict:
    """Restart the PostgreSQL cluster (breaks every connection on the machine; opt-in)."""
    started = time.monotonic()
    ctx.services.postgres_restart()
    return {"seconds": round(time.monotonic() - started, 1)}


# --- Messages ----------------------------------------------------------------------------------


def _producer():
    from kombu import Producer

    from ordering.celery import app

    connection = app.connection_for_write()
    connection.ensure_connection(max_retries=5)
    return connection, Producer(connection)


def _with_db[T](func: Callable[[], T]) -> T:
    """Run ORM code, reconnecting once if an injected fault killed this process's connection."""
    from django.db import InterfaceError, OperationalError, close_old_connections, connection

    close_old_connections()
    try:
        return func()
    except (OperationalError, InterfaceError):
        connection.close()
        return func()


def duplicate_deliveries(ctx: FaultContext) -> dict:
    """Republish copies of real, already published messages (same event id, same task id)."""
    from ordering.messaging.models import OutboxEvent
    from tests.services import publish_copies

    events = _with_db(
        lambda: list(OutboxEvent.objects.filter(published_at__isnull=False).order_by("?")[:DUPLICATES_PER_FAULT])
    )
    publish_copies(events)
    copies = [{"event_id": str(e.id), "event_type": e.event_type} for e in events]
    ctx.duplicates.extend(copies)
    return {"copies": len(copies)}


def _send(task_name: str, queue: str, envelope: object) -> str:
    from ordering.celery import app

    task_id = str(uuid.uuid4())
    connection, producer = _producer()
    with connection:
        app.send_task(task_name, kwargs={"envelope": envelope}, task_id=task_id, queue=queue, producer=producer)
    return task_id


def stale_events(ctx: FaultContext) -> dict:
    """Old events re-sent after the order moved on: must change nothing and charge nothing.

    For a finished order: its OrderCreated again (as a new message, new event id), and an
    outcome that contradicts its status (a decline for a paid order, a capture otherwise).
    """
    from billing.events import PaymentCaptured, PaymentDeclined
    from billing.models import Payment
    from ordering import catalogue
    from ordering.messaging.envelope import Envelope
    from ordering.messaging.models import OutboxEvent
    from orders.models import TERMINAL_STATUSES, Order, OrderStatus

    def pick() -> tuple[Order, Payment, OutboxEvent] | None:
        # Finished means terminal: a CANCELING order still moves, and is no stale event's target.
        for order in Order.objects.filter(status__in=TERMINAL_STATUSES).order_by("?")[:20]:
            payment = Payment.objects.filter(order_id=order.id).first()
            created = OutboxEvent.objects.filter(aggregate_id=str(order.id), event_type=catalogue.ORDER_CREATED).first()
            if payment and created:
                return order, payment, created
        return None

    picked = _with_db(pick)
    if picked is None:
        return {"skipped": "no finished order yet"}
    order, payment, created = picked
    now = created.envelope()
    resent = Envelope(
        event_id=uuid.uuid4(),
        event_type=now.event_type,
        version=now.version,
        occurred_at=now.occurred_at,
        aggregate_id=now.aggregate_id,
        correlation_id=now.correlation_id,
        causation_id=None,
        payload=now.payload,
    )
    if order.status == OrderStatus.PROCESSED:
        contradiction = PaymentDeclined(
            order_id=str(order.id), payment_id=str(payment.id), reason="stale", fraud_score=0, fraud_reasons=[]
        )
        task = catalogue.ORDERS_HANDLE_PAYMENT_DECLINED
    else:
        contradiction = PaymentCaptured(
            order_id=str(order.id),
            payment_id=str(payment.id),
            amount=str(payment.amount),
            currency=payment.currency,
            gateway_reference="stale-reference",
            fraud_score=0,
            fraud_reasons=[],
        )
        task = catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED
    outcome = Envelope(
        event_id=uuid.uuid4(),
        event_type=contradiction.event_type,
        version=contradiction.version,
        occurred_at=created.occurred_at,
        aggregate_id=str(order.id),
        correlation_id=now.correlation_id,
        causation_id=None,
        payload=contradiction.to_payload(),
    )
    messages = [
        (catalogue.BILLING_HANDLE_ORDER_CREATED, catalogue.BILLING_QUEUE, resent),
        (task, catalogue.ORDERS_QUEUE, outcome),
    ]
    for task_name, queue, envelope in messages:
        _send(task_name, queue, envelope.to_wire())
    ctx.stale.append(
        {
            "order_id": str(order.id),
            "status": order.status,
            "messages": [
                {"consumer": t, "event_id": str(e.event_id), "event_type": e.event_type} for t, _, e in messages
            ],
        }
    )
    return {"order_id": str(order.id), "status": order.status, "messages": len(messages)}


def poison_messages(ctx: FaultContext) -> dict:
    """A malformed envelope (billing) and an unknown event version (orders): each must be dead-lettered."""
    from ordering import catalogue

    n = len(ctx.poison)
    malformed = {"chaos-poison": n, "note": "not an envelope"}
    unknown_version = {
        "event_id": str(uuid.uuid4()),
        "event_type": catalogue.PAYMENT_CAPTURED,
        "version": 99,
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "aggregate_id": f"chaos-poison-{n + 1}",
        "correlation_id": "chaos-poison",
        "causation_id": None,
        "payload": {},
    }
    sent = [
        ("malformed envelope", catalogue.BILLING_HANDLE_ORDER_CREATED, catalogue.BILLING_QUEUE, malformed),
        ("unknown version", catalogue.ORDERS_HANDLE_PAYMENT_CAPTURED, catalogue.ORDERS_QUEUE, unknown_version),
    ]
    for what, task_name, queue, envelope in sent:
        task_id = _send(task_name, queue, envelope)
        ctx.poison.append({"task_id": task_id, "what": what, "task": task_name, "queue": queue})
    return {"task_ids": [p["task_id"] for p in ctx.poison[n:]]}


# --- Payment gateway ---------------------------------------------------------------------------


def _gateway_outage(ctx: FaultContext, seconds: float, *, refunds: bool = False) -> None:
    """The simulated gateway fails every charge (or every refund) for `seconds`, then works again."""
    from django.utils import timezone

    from billing.models import GatewayOperation, SimulatedGatewayOutage

    operation = GatewayOperation.REFUND if refunds else GatewayOperation.CHARGE
    until = _with_db(lambda: timezone.now() + timedelta(seconds=seconds))
    _with_db(lambda: SimulatedGatewayOutage.objects.create(until=until, operation=operation, note="chaos run"))
    try:
        ctx.sleep(seconds)
    finally:
        _with_db(
            lambda: SimulatedGatewayOutage.objects.filter(until__gt=timezone.now(), operation=operation).update(
                until=timezone.now()
            )
        )


def gateway_outage_short(ctx: FaultContext) -> dict:
    """An outage shorter than the retry budget: retries ride it out, nothing is dead-lettered."""
    _gateway_outage(ctx, SHORT_OUTAGE_SECONDS)
    return {"seconds": SHORT_OUTAGE_SECONDS, "retry_budget_seconds": RETRY_BUDGET_SECONDS}


def replay_dead_letters(ctx: FaultContext, why: str, *, event_type: str) -> dict:
    """`manage.py replay_dead_letters` for billing's dead-lettered messages of `event_type`.

    By event type, so the injected poison (a malformed envelope has none) stays in its DLQ.
    """
    command = [sys.executable, "manage.py", "replay_dead_letters", "--queue", "billing.events"]
    command += ["--event-type", event_type, "--reset-retries"]
    result = subprocess.run(
        command,
        check=False,
        cwd=ROOT,
        env=ctx.environment.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    record = {"why": why, "at": time.time(), "exit": result.returncode, "summary": summary, "event_type": event_type}
    ctx.replays.append(record)
    ctx.log(f"replay ({why}): {summary}")
    return record


def replay_order_created(ctx: FaultContext, why: str) -> dict:
    """Replay billing's dead-lettered OrderCreated: charges a long outage of charges left."""
    from ordering import catalogue

    return replay_dead_letters(ctx, why, event_type=catalogue.ORDER_CREATED)


def replay_cancel_requested(ctx: FaultContext, why: str) -> dict:
    """Replay billing's dead-lettered OrderCancelRequested: refunds a long outage of refunds left."""
    from ordering import catalogue

    return replay_dead_letters(ctx, why, event_type=catalogue.ORDER_CANCEL_REQUESTED)


def gateway_outage_long(ctx: FaultContext) -> dict:
    """An outage longer than the retry budget: orders are dead-lettered, then the run replays them."""
    _gateway_outage(ctx, LONG_OUTAGE_SECONDS)
    # Only an attempt inside the outage can fail, so every dead letter of this outage is in the
    # DLQ moments after it ended (give a rejection in flight a few seconds).
    ctx.sleep(3)
    replay = replay_order_created(ctx, "after long gateway outage")
    return {"seconds": LONG_OUTAGE_SECONDS, "retry_budget_seconds": RETRY_BUDGET_SECONDS, "replay": replay["summary"]}


def gateway_refund_outage(ctx: FaultContext) -> dict:
    """Refunds fail for longer than the retry budget (charges go on): cancellations of charged orders
    are dead-lettered, then the run replays them as it does after a long outage of charges.

    Long rather than short on purpose: a refund that outlives its retries must stay replayable,
    and the order must wait CANCELING for it (never end REFUNDED or PROCESSED without the money).
    """
    _gateway_outage(ctx, LONG_OUTAGE_SECONDS, refunds=True)
    ctx.sleep(3)  # as after an outage of charges: a rejection in flight reaches the DLQ
    # Both: a capture that lands after its order's cancellation is refunded by the OrderCreated
    # consumer that charged it, so a refund outage dead-letters OrderCreated messages too.
    replays = [replay_cancel_requested(ctx, "after refund outage"), replay_order_created(ctx, "after refund outage")]
    return {
        "seconds": LONG_OUTAGE_SECONDS,
        "retry_budget_seconds": RETRY_BUDGET_SECONDS,
        "replays": [r["summary"] for r in replays],
    }


FAULTS: dict[str, Callable[[FaultContext], dict]] = {
    "kill_pool_child": kill_pool_child,
    "kill_worker": kill_worker,
    "kill_relay": kill_relay,
    "kill_web_worker": kill_web_worker,
    "broker_restart": broker_restart,
    "broker_close_connections": broker_close_connections,
    "db_terminate_backends": db_terminate_backends,
    "duplicate_deliveries": duplicate_deliveries,
    "stale_events": stale_events,
    "poison_messages": poison_messages,
    "gateway_outage_short": gateway_outage_short,
    "gateway_outage_long": gateway_outage_long,
    "gateway_refund_outage": gateway_refund_outage,
}
OPTIONAL_FAULTS: dict[str, Callable[[FaultContext], dict]] = {"db_restart": db_restart}
# With --cluster: the cluster's faults instead of stopping the machine's single node.
CLUSTER_FAULTS: dict[str, Callable[[FaultContext], dict]] = {
    "node_kill_leader": node_kill_leader,
    "node_kill": node_kill,
    "node_stop_app": node_stop_app,
}
SINGLE_NODE_FAULTS = frozenset({"broker_restart"})
# Faults during which the API must keep answering 201 (the broker is not needed to accept orders).
BROKER_FAULTS = frozenset({"broker_restart", "broker_close_connections", *CLUSTER_FAULTS})


def fault_kinds(*, cluster: bool) -> list[str]:
    """Every kind a run injects by default: on a cluster, node losses instead of the single node's restart."""
    if cluster:
        return [kind for kind in FAULTS if kind not in SINGLE_NODE_FAULTS] + list(CLUSTER_FAULTS)
    return list(FAULTS)


def schedule(count: int, kinds: list[str], rng: random.Random) -> list[str]:
    """`count` faults: every kind once (shuffled) while there is room, then again, and so on."""
    plan: list[str] = []
    while len(plan) < count:
        round_ = list(kinds)
        rng.shuffle(round_)
        plan.extend(round_)
    return plan[:count]


def inject(ctx: FaultContext, kind: str) -> FaultRecord:
    record = FaultRecord(kind=kind, started_at=time.time())
    ctx.log(f"fault {kind}: start")
    try:
        record.detail = (FAULTS | OPTIONAL_FAULTS | CLUSTER_FAULTS)[kind](ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.ended_at = time.time()
    ctx.log(
        f"fault {kind}: end after {record.ended_at - record.started_at:.1f}s "
        + (f"ERROR {record.error}" if record.error else str(record.detail))
    )
    return record
