"""The chaos run: `python -m tests.chaos.run [--orders N] [--faults N] [--rate R]` (make chaos).

1. creates its own database and RabbitMQ vhost, migrates, declares the topology, creates an
   API user with a token;
2. starts the system as real processes (gunicorn with 3 workers, 2 relays, 2 workers per queue);
   with --cluster, against a three-node RabbitMQ cluster (tests/cluster.py; started if it is not
   running, and stopped afterwards if the run started it), whose nodes it kills and stops too;
3. sends orders over HTTP at a fixed rate, and cancels a share of them at random moments, while
   it injects faults on a schedule;
4. drains (replaying dead letters of long gateway outages, of charges and of refunds), checks the
   ledger, prints it and writes it as JSON; exit status 1 on any violation, 2 if the run itself
   could not be done.

Whatever it stops on the shared PostgreSQL and RabbitMQ it brings back, also on failure or
SIGINT/SIGTERM; its database and vhost are removed afterwards unless --keep.
"""

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from tests.chaos.cancels import DEFAULT_SHARE
from tests.chaos.faults import (
    CLUSTER_FAULTS,
    FAULTS,
    OPTIONAL_FAULTS,
    FaultContext,
    FaultRecord,
    fault_kinds,
    inject,
    replay_cancel_requested,
    replay_order_created,
    schedule,
)
from tests.chaos.system import ChaosEnvironment, SharedServices, build_processes, free_port, wait_for_web
from tests.cluster import RabbitCluster
from tests.processes import ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1000, help="orders to send (default %(default)s)")
    parser.add_argument("--faults", type=int, help="faults to inject (default: every kind of --kinds once)")
    parser.add_argument("--rate", type=float, default=12.0, help="orders per second (default %(default)s)")
    parser.add_argument(
        "--cancel-share",
        type=float,
        default=DEFAULT_SHARE,
        help="share of accepted orders to cancel, each at a random moment (default %(default)s)",
    )
    parser.add_argument(
        "--kinds",
        help=f"comma-separated fault kinds (default: all of {', '.join(FAULTS)}; optional: db_restart; "
        f"with --cluster: {', '.join(CLUSTER_FAULTS)} instead of broker_restart)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run against a three-node RabbitMQ cluster (make cluster's: 5673-5675) and kill its nodes",
    )
    parser.add_argument("--cluster-name", default="ordering", help="the cluster's name (default %(default)s)")
    parser.add_argument("--cluster-port-base", type=int, default=5673, help="its first node's AMQP port")
    parser.add_argument(
        "--pg-restart",
        action="store_true",
        help="also restart the PostgreSQL cluster (breaks every connection on the machine)",
    )
    parser.add_argument("--drain-timeout", type=float, default=300, help="seconds to wait for the drain")
    parser.add_argument("--max-seconds", type=float, help="hard bound on load plus faults (default: 3x planned)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of prices and fault order")
    parser.add_argument("--out", type=Path, help="directory for logs and ledger.json (default chaos-results/<id>)")
    parser.add_argument("--json", type=Path, help="also write the ledger JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the run's database and vhost afterwards")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.rate <= 0 or (args.faults or 0) < 0 or not 0 <= args.cancel_share <= 1:
        parser.error("--orders >= 1, --rate > 0, --faults >= 0, 0 <= --cancel-share <= 1")
    return args


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: clean up, restore the services, exit."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def setup_django(env: dict[str, str], *, username: str = "chaos", settings_module: str | None = None) -> str:
    """Configure Django for the run's database and broker, migrate, and return an API token."""
    os.environ.update(env)
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    os.environ["LOG_LEVEL"] = "WARNING"  # the run's own output is its log, not Django's
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from ordering.celery import app
    from ordering.messaging.topology import declare_topology

    call_command("migrate", verbosity=0, interactive=False)
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=5)
        declare_topology(connection)
    user = get_user_model().objects.create_user(username=username, password=None)
    return Token.objects.create(user=user).key


def drain(ctx: FaultContext, timeout: float, last_fault_end: float) -> dict:
    """Wait until every order is terminal and every message consumed; replay what a long outage left.

    CANCELING is not terminal: a cancellation waits for billing's void or refund like a PENDING
    order waits for its outcome, and a refund outage can leave it dead-lettered the same way.
    """
    from django.db import close_old_connections

    from tests.chaos.ledger import pipeline_state, queue_stats

    started = time.time()
    state: dict = {}
    replays = 0
    progress_at, last_pending = time.monotonic(), None
    while time.time() - started < timeout:
        close_old_connections()
        state = pipeline_state()
        if not any(state.values()):
            queues = queue_stats(ctx.environment)
            busy = {n: q for n, q in queues.items() if not n.endswith(".dlq") and (q["ready"] or q["unacked"])}
            if not busy:
                return {
                    "drained": True,
                    "seconds": round(time.time() - started, 1),
                    "since_last_fault_seconds": round(time.time() - last_fault_end, 1),
                    "replays_during_drain": replays,
                }
            state["queues_busy"] = busy
        pending = (state["pending_orders"], state["canceling_orders"])
        if pending != last_pending:
            progress_at, last_pending = time.monotonic(), pending
        elif any(pending) and time.monotonic() - progress_at > 15:
            # No progress: dead letters of OrderCreated or OrderCancelRequested (an outage of
            # charges or refunds that outlived the retry budget after the run's own replay) would
            # be the reason. Replay them as an operator would. A CANCELING order may wait for
            # either: a charge that landed after the cancellation is refunded by OrderCreated's consumer.
            replay_order_created(ctx, "drain: no progress for 15 s")
            replays += 1
            if state["canceling_orders"]:
                replay_cancel_requested(ctx, "drain: no progress of cancellations for 15 s")
                replays += 1
            progress_at = time.monotonic()
        ctx.sleep(1)
    return {
        "drained": False,
        "seconds": round(time.time() - started, 1),
        "state": state,
        "replays_during_drain": replays,
    }


def restart_dead_processes(ctx: FaultContext) -> list[str]:
    dead = [p for p in ctx.group.processes.values() if p.popen is None or p.popen.poll() is not None]
    for process in dead:
        ctx.log(f"{process.name} had exited ({process.popen.returncode if process.popen else '-'}): restarting")
        process.start()
    return [p.name for p in dead]


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915
    args = parse_args(argv)
    cluster = RabbitCluster(name=args.cluster_name, port_base=args.cluster_port_base) if args.cluster else None
    environment = ChaosEnvironment(cluster=cluster)
    out_dir = args.out or ROOT / "chaos-results" / environment.run_id
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run_log = (out_dir / "run.log").open("a")
    t0 = time.time()

    def log(message: str) -> None:
        line = f"[chaos {time.time() - t0:7.1f}s] {message}"
        print(line, flush=True)
        run_log.write(line + "\n")
        run_log.flush()

    cluster_started: list[int] = []
    if cluster is not None:
        log(f"cluster {cluster.name}: starting the nodes that do not run")
        try:
            cluster_started = cluster.start()
        except Exception as exc:  # reported as a missing service below
            log(f"cluster {cluster.name} did not start: {exc}")
    missing = environment.missing_services()
    if missing:
        log("the chaos run needs these services, which are not available: " + "; ".join(missing))
        return 2

    kinds = args.kinds.split(",") if args.kinds else fault_kinds(cluster=args.cluster)
    kinds += ["db_restart"] if args.pg_restart and not args.kinds else []
    known = FAULTS | OPTIONAL_FAULTS | CLUSTER_FAULTS if args.cluster else FAULTS | OPTIONAL_FAULTS
    unknown = [k for k in kinds if k not in known or (args.cluster and k == "broker_restart")]
    if unknown:
        log(f"unknown fault kinds: {', '.join(unknown)}")
        return 2
    rng = random.Random(args.seed)
    plan = schedule(len(kinds) if args.faults is None else args.faults, kinds, rng)

    services = SharedServices(cluster)
    stop = threading.Event()
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    group = load = None
    status = 2
    try:
        log(f"run {environment.run_id}: database {environment.database}, vhost {environment.vhost}, out {out_dir}")
        environment.create()
        token = setup_django(environment.env())
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        group = build_processes(environment, log_dir, port)
        group.start_all()
        wait_for_web(base_url)
        log(f"system up: {', '.join(group.processes)}; web on {base_url}")

        from tests.chaos.ledger import build_ledger, format_ledger
        from tests.chaos.load import OrderLoad

        ctx = FaultContext(environment=environment, group=group, services=services, rng=rng, stop=stop, log=log)
        load = OrderLoad(
            base_url=base_url,
            token=token,
            run_id=environment.run_id,
            total=args.orders,
            rate=args.rate,
            seed=args.seed,
            cancel_share=args.cancel_share,
        )
        planned = load.planned_seconds
        max_seconds = args.max_seconds or max(3 * planned, planned + 120)
        log(
            f"load: {args.orders} orders at {args.rate}/s (~{planned:.0f}s), {len(load.cancels.plan)} of them to be "
            f"cancelled if accepted; faults: {len(plan)}: {', '.join(plan)}"
        )
        load.start()
        faults: list[FaultRecord] = []
        gap = planned / (len(plan) + 1) if plan else 0
        for i, kind in enumerate(plan):
            due = load.started_at + (i + 1) * gap
            if time.time() - load.started_at > max_seconds:
                log(f"time bound of {max_seconds:.0f}s reached: {len(plan) - i} faults not injected")
                break
            ctx.sleep(max(due - time.time(), 3.0))  # 3 s at least, so the effects of two faults stay apart
            faults.append(inject(ctx, kind))
        last_fault_end = faults[-1].ended_at if faults else time.time()
        remaining = max(5.0, max_seconds - (time.time() - load.started_at))
        if not load.join(remaining):
            log("load did not finish in time: aborting it")
            load.abort()
        log(
            f"load done: {sum(1 for r in load.requests if r.accepted)} of {len(load.requests)} accepted; "
            f"{len(load.cancels.requests)} cancellations sent"
        )
        restarted = restart_dead_processes(ctx)
        drained = drain(ctx, args.drain_timeout, last_fault_end)
        drained["processes_found_dead"] = restarted
        log(f"drain: {drained}")
        ledger = build_ledger(
            ctx=ctx,
            load=load,
            faults=faults,
            drain=drained,
            requested_faults=len(plan),
            required_kinds=sorted(set(plan)),
        )
        ledger["command"] = "python -m tests.chaos.run " + " ".join(argv if argv is not None else sys.argv[1:])
        ledger["processes"] = list(group.processes)
        ledger["broker"] = (
            {"cluster": cluster.name, "nodes": [cluster.node(n) for n in cluster.nodes]}
            if cluster is not None
            else {"single_node": "127.0.0.1:5672"}
        )
        ledger["started_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t0))
        ledger["wall_seconds"] = round(time.time() - t0, 1)
        text = format_ledger(ledger, t0)
        print(text, flush=True)
        run_log.write(text + "\n")
        ledger["requests"] = load.records()
        ledger["cancel_requests"] = load.cancel_records()
        for path in filter(None, [out_dir / "ledger.json", args.json]):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ledger, indent=2, default=str))
        (out_dir / "ledger.txt").write_text(text + "\n")
        log(f"ledger: {out_dir / 'ledger.json'}")
        status = 1 if ledger["violations"] else 0
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'SIGINT'}): cleaning up")
        status = 130
    except Exception:
        log("the chaos run failed:\n" + traceback.format_exc())
        status = 2
    finally:
        # No second signal may cut the clean-up short: the services are shared.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
        if load is not None:
            load.abort()
        restored = services.restore()
        if restored:
            log(f"restored: {', '.join(restored)}")
        if group is not None:
            group.stop_all()
        if args.keep:
            log(f"kept database {environment.database} and vhost {environment.vhost}")
        else:
            with contextlib.suppress(Exception):
                from django.db import connections

                connections.close_all()
            environment.destroy()
        if cluster is not None and len(cluster_started) == cluster.size:
            with contextlib.suppress(Exception):
                cluster.stop()
                log(f"cluster {cluster.name} stopped (the run had started it)")
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log(f"exit {status}")
        run_log.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
