"""`python -m tests.bench` (make bench): the pipeline as production runs it, swept up to saturation.

1. its own database and RabbitMQ vhost, migrated, topology declared, an API user with a token;
2. two ceilings on the Procfile's own gunicorn and Celery command lines: a trivial authenticated
   DRF create (closed loop) and a two-task Celery no-op chain (a full queue drained);
3. the Procfile's processes, then open-loop HTTP load at rising rates, each step bounded in
   count and time and drained before the next; per step: accepted and finished orders/s, POST and
   created->terminal percentiles (terminal time from the database), outbox lag, transactions and
   CPU ms per order per process type, peak RSS;
4. a RabbitMQ outage under load (recovery time, nothing lost) and replay throughput;
5. prints Markdown tables and writes result.json, table.md and bench.png to bench-results/<time>/.

--broker cluster runs it all against the three-node cluster of `make cluster` (started if it does
not run, stopped afterwards if the bench started it); its outage is the loss of the node that
leads billing's queue (SIGKILL, back after --outage-seconds). --broker both runs the parts on the
node, then on the cluster, in one run, and prints the two side by side (compare.md).

It stops and starts the node's RabbitMQ app for the outage: never run it beside the tests.
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ordering import catalogue
from tests.bench import measure, report
from tests.bench.system import System, chain_commands, pipeline_commands
from tests.chaos.run import setup_django
from tests.chaos.system import ChaosEnvironment, SharedServices, free_port
from tests.cluster import RabbitCluster
from tests.processes import ROOT

DEFAULT_RATES = "10,50,100,150,200,250,300,350,400,500"
TARGETS = {
    "sustained orders/s": ">= 150 (aim 300)",
    "CPU ms per order": "<= 13 (aim 6.5)",
    "at 100/s: created->terminal p99": "<= 100 ms",
    "at 100/s: POST p99": "<= 50 ms",
    "at 10/s: created->terminal p50": "<= 10 ms",
    "replay": ">= 1,000 dead letters/s",
    "worker peak RSS": "<= 150 MB",
    "after a 30 s broker outage at 100/s": "drained and normal within 30 s, nothing lost",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default=DEFAULT_RATES, help="offered orders/s per step (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=15, help="length of each step (default %(default)s)")
    parser.add_argument("--max-orders", type=int, default=6000, help="orders per step at most (default %(default)s)")
    parser.add_argument(
        "--stop-after", type=int, default=1, help="stop the sweep after this many unsustained steps (default 1)"
    )
    parser.add_argument(
        "--parts",
        default="ceilings,sweep,outage,replay",
        help="what to measure, comma-separated (default %(default)s)",
    )
    parser.add_argument("--ceiling-seconds", type=float, default=10, help="closed-loop time of the DRF ceiling")
    parser.add_argument("--chains", type=int, default=4000, help="no-op chains in the Celery ceiling")
    parser.add_argument("--replay-count", type=int, default=5000, help="dead letters to replay")
    parser.add_argument("--outage-rate", type=float, default=100, help="orders/s during the outage run")
    parser.add_argument("--outage-seconds", type=float, default=30, help="length of the RabbitMQ outage")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the system's processes (default INFO)")
    parser.add_argument("--gateway-latency-ms", type=int, default=0, help="simulated gateway latency per charge")
    parser.add_argument("--out", type=Path, help="output folder (default bench-results/<time>)")
    parser.add_argument(
        "--broker",
        choices=["node", "cluster", "both"],
        default="node",
        help="the machine's RabbitMQ node, make cluster's three nodes, or both in turn (default %(default)s)",
    )
    args = parser.parse_args(argv)
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    args.part_set = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = args.part_set - {"ceilings", "sweep", "outage", "replay"}
    if unknown or not args.rate_list:
        parser.error(f"unknown parts {sorted(unknown)}" if unknown else "give at least one rate")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    from django.db import connection

    from ordering.celery import app

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0].split()[0]
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        rabbitmq = conn.connection.server_properties.get("version", "?")
    rabbitmq = rabbitmq.decode() if isinstance(rabbitmq, bytes) else rabbitmq
    info = {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gib": round(memory_kb / 1024 / 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "rabbitmq": rabbitmq,
    }
    info["summary"] = (
        f"{info['cores']} cores ({cpu_model}), {info['memory_gib']} GiB, Python {info['python']}, "
        f"PostgreSQL {postgres}, RabbitMQ {rabbitmq}"
    )
    return info


def prepare(environment: ChaosEnvironment) -> str:
    """Django for this process (bench settings), migrated, topology declared; returns an API token."""
    return setup_django(environment.env(), username="bench", settings_module="tests.bench.settings")


def summarise(result: dict) -> dict:
    steps = result.get("steps") or []
    good = [s for s in steps if s["sustained"]]
    best = max(good, key=lambda s: s["offered_per_second"], default=None)
    summary: dict[str, str] = {}
    if steps:
        summary["sustained orders/s"] = (
            f"{best['finished_per_second']:.0f} (offered {best['offered_per_second']:g})" if best else "none"
        )
    if best:
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in best["cpu_ms_per_order"].items() if v is not None)
        total, rate = best["cpu_ms_per_order_total"], best["offered_per_second"]
        summary["CPU ms per order"] = f"{total:.1f} at {rate:g}/s ({kinds})"
    by_rate = {s["offered_per_second"]: s for s in steps}
    if 100 in by_rate:
        summary["at 100/s: created->terminal p99"] = f"{by_rate[100]['end_to_end_ms']['p99']} ms"
        summary["at 100/s: POST p99"] = f"{by_rate[100]['post_ms']['p99']} ms"
    if 10 in by_rate:
        summary["at 10/s: created->terminal p50"] = f"{by_rate[10]['end_to_end_ms']['p50']} ms"
    ceilings = result.get("ceilings") or {}
    for name, ceiling in ceilings.items():
        share = f", pipeline {100 * best['finished_per_second'] / ceiling['per_second']:.0f} % of it" if best else ""
        summary[f"ceiling: {name}"] = f"{ceiling['per_second']:.0f}/s{share}"
    if replay := result.get("replay"):
        summary["replay"] = f"{replay['per_second']:.0f} dead letters/s ({replay['replayed']} in {replay['seconds']} s)"
    if steps:
        workers = [max(s["peak_rss_mb"].get(k, 0) for s in steps) for k in ("billing", "orders", "relay")]
        summary["worker peak RSS"] = f"{max(workers):.0f} MB"
    if outage := result.get("outage"):
        if outage.get("broker_down", "").startswith("leader"):
            summary["after losing the leader node"] = (
                f"killed at {outage['offered_per_second']:g}/s, away {outage['away_seconds']} s, back after "
                f"{outage['outage_seconds']} s: created->terminal p99 at worst {outage['p99_ms_worst_in_first_second']}"
                f" ms in the first second, {outage['p99_ms_worst_while_away']} ms while it is away, "
                f"{outage['p99_ms_worst_while_coming_back']} ms while it comes back, "
                f"{outage['p99_ms_worst_after_return']} ms after; {outage['lost_or_unfinished']} lost, "
                f"{outage['errors']} errors"
            )
        else:
            summary["after a 30 s broker outage at 100/s"] = (
                f"{outage['outage_seconds']} s outage at {outage['offered_per_second']:g}/s: backlog of "
                f"{outage['backlog_orders']} drained {outage['backlog_drained_after_return_seconds']} s after the "
                f"return, latency normal after {outage['latency_normal_after_return_seconds']} s, "
                f"{outage['lost_or_unfinished']} lost, {outage['errors']} errors"
            )
    return {key: f"{value} (target {TARGETS[key]})" if key in TARGETS else value for key, value in summary.items()}


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915
    args = parse_args(argv)
    process_env = {
        "SECRET_KEY": "benchmark-only-secret-key",
        "DEBUG": "false",
        # gunicorn serves plain HTTP on 127.0.0.1 here: no redirect to HTTPS.
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": args.log_level,
        "SIMULATED_GATEWAY_LATENCY_MS": str(args.gateway_latency_ms),
        # One token sends every order (hundreds a second): measure the pipeline, not the throttle.
        "API_THROTTLE_USER_RATE": "none",
        "API_THROTTLE_CREATE_RATE": "none",
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or ROOT / "bench-results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.broker == "both":
        return node_and_cluster(argv if argv is not None else sys.argv[1:], out_dir)
    cluster = RabbitCluster() if args.broker == "cluster" else None
    environment = ChaosEnvironment(kind="bench", process_env=process_env, cluster=cluster)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - t0:6.1f}s] {message}", flush=True)

    cluster_started = cluster.start() if cluster is not None else []
    missing = environment.missing_services()
    if missing:
        log("the benchmark needs: " + "; ".join(missing))
        return 2
    services = SharedServices(cluster)
    running: list[System] = []
    result: dict = {
        "command": "python -m tests.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    status = 2
    previous = signal.signal(signal.SIGTERM, _interrupt)

    def start(commands: dict[str, str], **env: str) -> System:
        system = System(environment, out_dir / "logs", free_port(), commands, **env)
        (out_dir / "logs").mkdir(exist_ok=True)
        running.append(system)
        system.start()
        return system

    def stop(system: System) -> None:
        system.stop()
        running.remove(system)

    try:
        log(f"database {environment.database}, vhost {environment.vhost}, results in {out_dir}")
        environment.create()
        token = prepare(environment)
        result["machine"] = machine()
        log(result["machine"]["summary"])
        if "ceilings" in args.part_set:
            result["ceilings"] = ceilings(args, start, stop, token, log)
        if args.part_set & {"sweep", "outage"}:
            system = start(pipeline_commands())
            meter = measure.Meter(system.roots())
            pipeline = measure.Pipeline(port=system.port, token=token, run_id=environment.run_id, meter=meter, log=log)
            log("warm-up: 3 s at 20/s")
            measure.run_step(pipeline, 20, 3, 60)
            if "sweep" in args.part_set:
                result["steps"] = sweep(args, pipeline, log)
            if "outage" in args.part_set:
                result["outage"] = outage(args, environment, services, pipeline, log)
                log(f"  {result['outage']}")
            stop(system)
        if "replay" in args.part_set:
            log(f"replay: {args.replay_count} dead letters")
            result["replay"] = measure.replay_throughput(args.replay_count)
            log(f"  {result['replay']}")
        result["summary"] = summarise(result)
        status = 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except Exception:
        log("the benchmark failed:\n" + traceback.format_exc())
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        restored = services.restore()
        if restored:
            log(f"restored: {', '.join(restored)}")
        for system in list(running):
            system.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        environment.destroy()
        if cluster is not None and len(cluster_started) == cluster.size:
            cluster.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if "machine" in result:
        (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
        table = report.markdown(result)
        (out_dir / "table.md").write_text(table + "\n")
        report.plot(result, out_dir / "bench.png")
        print("\n" + table + "\n", flush=True)
        log(f"wrote {out_dir / 'result.json'}, table.md, bench.png")
    return status


def outage(args: argparse.Namespace, environment: ChaosEnvironment, services: SharedServices, pipeline, log) -> dict:
    """The single node's RabbitMQ app stopped, or the cluster's node that leads billing's queue killed."""
    cluster = environment.cluster
    if cluster is None:
        log(f"outage: {args.outage_seconds:g} s without RabbitMQ at {args.outage_rate:g}/s")
        take_down, bring_back = services.broker_stop, services.broker_start
    else:
        leader = cluster.leader(environment.vhost, catalogue.BILLING_QUEUE)
        log(f"outage: {cluster.node(leader)} (leads billing's queue) killed for {args.outage_seconds:g} s")
        take_down, bring_back = (lambda: services.node_kill(leader)), services.nodes_start
    result = measure.broker_outage(
        pipeline,
        take_down=take_down,
        bring_back=bring_back,
        rate=args.outage_rate,
        before=10,
        outage=args.outage_seconds,
        after=40,
    )
    result["broker_down"] = "RabbitMQ app stopped" if cluster is None else "leader node of billing's queue killed"
    return result


def node_and_cluster(argv: list[str], out_dir: Path) -> int:
    """The same parts on the node, then on the cluster, each in a run of its own; both side by side."""
    own = _without(_without(argv, "--broker"), "--out")
    results = {}
    for broker in ("node", "cluster"):
        command = [sys.executable, "-m", "tests.bench", *own, "--broker", broker, "--out", str(out_dir / broker)]
        print(f"[bench] {broker}: {' '.join(command[1:])}", flush=True)
        status = subprocess.run(command, check=False, cwd=ROOT).returncode
        if status != 0:
            return status
        results[broker] = json.loads((out_dir / broker / "result.json").read_text())
    table = report.comparison(results)
    (out_dir / "compare.md").write_text(table + "\n")
    print("\n" + table + "\n", flush=True)
    return 0


def _without(argv: list[str], option: str) -> list[str]:
    """`argv` without `option` and its value (given as "--option value" or "--option=value")."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip or arg.startswith(option + "="):
            skip = False
            continue
        skip = arg == option
        if not skip:
            kept.append(arg)
    return kept


def ceilings(args: argparse.Namespace, start, stop, token: str, log) -> dict:
    commands = pipeline_commands()
    log(f"ceiling: trivial DRF create, closed loop for {args.ceiling_seconds:g} s")
    web = start({"web": commands["web"]}, DJANGO_SETTINGS_MODULE="tests.bench.settings")
    drf = measure.drf_create_ceiling(web.port, token, measure.Meter(web.roots()), args.ceiling_seconds)
    stop(web)
    log(f"  {drf['per_second']}/s, {drf['cpu_ms_per_request_total']} ms CPU per request")
    log(f"ceiling: Celery no-op chain, {args.chains} chains")
    holder: dict[str, System] = {}

    def start_workers() -> None:
        holder["chain"] = start(chain_commands(), DJANGO_SETTINGS_MODULE="tests.bench.settings")

    chain = measure.chain_ceiling(start_workers, lambda: measure.Meter(holder["chain"].roots()), args.chains)
    stop(holder["chain"])
    log(f"  {chain['per_second']}/s, {chain['cpu_ms_per_chain_total']} ms CPU per chain")
    return {"trivial DRF create": drf, "Celery no-op chain": chain}


def sweep(args: argparse.Namespace, pipeline: measure.Pipeline, log) -> list[dict]:
    steps = []
    unsustained = 0
    for rate in args.rate_list:
        log(f"step: {rate:g} orders/s for {args.seconds:g} s")
        step = measure.run_step(pipeline, rate, args.seconds, args.max_orders)
        e2e = step["end_to_end_ms"]
        log(
            f"  finished {step['finished_per_second']}/s, errors {sum(step['errors'].values())}, "
            f"created->terminal p50 {e2e['p50']} p99 {e2e['p99']} ms, POST p99 {step['post_ms']['p99']} ms, "
            f"CPU {step['cpu_ms_per_order_total']} ms/order, {'sustained' if step['sustained'] else 'NOT sustained'}"
        )
        steps.append(step)
        unsustained += not step["sustained"]
        if unsustained >= args.stop_after:
            break
    return steps


if __name__ == "__main__":
    sys.exit(main())
