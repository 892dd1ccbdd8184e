"""The chaos run's own database, RabbitMQ vhost and processes, and the services it may stop.

Everything here is created for one run and removed after it: database `ordering_chaos_<id>`,
vhost `ordering-chaos-<id>`. The machine's PostgreSQL and RabbitMQ are shared with the rest of
the test suite, so whatever the run stops (the RabbitMQ app, a PostgreSQL cluster, a node of the
RabbitMQ cluster of --cluster) is tracked in `SharedServices` and brought back by `restore()`,
which the run calls in `finally`.
"""

import contextlib
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests
from psycopg import sql

from tests.cluster import RabbitCluster
from tests.processes import ProcessGroup, free_port  # noqa: F401 (free_port: imported from here too)
from tests.services import rabbitmq_start_app, rabbitmqctl, reachable

PG_HOST, PG_PORT = "127.0.0.1", 5432
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672

# Retry policy of the consumers in the chaos run: no jitter, so the retry budget is a fixed
# time (1 + 2 + 4 s = 7 s between the first and the last attempt). With Celery's full jitter
# (randrange(countdown + 1), whole seconds) every retry can be 0 s and a 2 s outage could exhaust
# the budget; without it "shorter than the retry budget" means what it says.
RETRY_MAX = 3
RETRY_DELAYS = (1, 2, 4)
RETRY_BUDGET_SECONDS = sum(RETRY_DELAYS)

PROCESS_ENV = {
    "LOG_LEVEL": "INFO",
    "SECRET_KEY": "chaos-run-only-secret-key",
    "DEBUG": "false",
    # gunicorn serves plain HTTP on 127.0.0.1 here: no redirect to HTTPS.
    "SECURE_SSL_REDIRECT": "false",
    "CONSUMER_RETRY_MAX": str(RETRY_MAX),
    "CONSUMER_RETRY_BACKOFF_SECONDS": "1",
    "CONSUMER_RETRY_BACKOFF_MAX_SECONDS": str(max(RETRY_DELAYS)),
    "CONSUMER_RETRY_JITTER": "false",
    "RELAY_SWEEP_SECONDS": "1",
    # A few ms per charge, so kills land inside the gateway call now and then.
    "SIMULATED_GATEWAY_LATENCY_MS": "20",
    # The load comes from one token at up to hundreds of orders a second: no API throttling.
    "API_THROTTLE_USER_RATE": "none",
    "API_THROTTLE_CREATE_RATE": "none",
}


def pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: float(v) if v.replace(".", "").isdigit() else 0)
    return versions[-1]


def pg_ctlcluster(action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(host, port, timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{host}:{port} not reachable after {timeout}s")


class SharedServices:
    """What the run has stopped on the machine's shared services, and how to bring it back."""

    def __init__(self, cluster: RabbitCluster | None = None) -> None:
        self.broker_stopped = False
        self.postgres_stopped = False
        self.cluster = cluster
        self.nodes_killed: set[int] = set()
        self.node_apps_stopped: set[int] = set()

    def node_kill(self, n: int) -> int:
        assert self.cluster is not None
        self.nodes_killed.add(n)
        return self.cluster.kill(n)

    def node_stop_app(self, n: int) -> None:
        assert self.cluster is not None
        self.node_apps_stopped.add(n)
        self.cluster.stop_app(n)

    def nodes_start(self) -> None:
        """Bring back every node the run took down: start_app where only the app stopped, else the node."""
        assert self.cluster is not None
        for n in sorted(self.node_apps_stopped):
            self.cluster.start_app(n)
            self.node_apps_stopped.discard(n)
        self.cluster.start()
        self.nodes_killed.clear()

    def broker_stop(self) -> None:
        self.broker_stopped = True
        rabbitmqctl("stop_app")

    def broker_start(self) -> None:
        rabbitmq_start_app()
        self.broker_stopped = False

    def postgres_restart(self) -> None:
        self.postgres_stopped = True
        pg_ctlcluster("restart")
        wait_for_port(PG_HOST, PG_PORT, timeout=60)
        self.postgres_stopped = False

    def restore(self) -> list[str]:
        """Start whatever is still stopped; returns what had to be restored."""
        restored = []
        if self.cluster is not None and (self.nodes_killed or self.node_apps_stopped):
            with contextlib.suppress(Exception):
                self.nodes_start()
                restored.append(f"cluster {self.cluster.name}: every node")
        if self.broker_stopped or not reachable(AMQP_HOST, AMQP_PORT):
            with contextlib.suppress(Exception):
                self.broker_start()
                restored.append("rabbitmq start_app")
        if self.postgres_stopped or not reachable(PG_HOST, PG_PORT):
            with contextlib.suppress(Exception):
                pg_ctlcluster("start")
                wait_for_port(PG_HOST, PG_PORT, timeout=60)
                self.postgres_stopped = False
                restored.append("postgresql start")
        return restored


def admin_connection() -> psycopg.Connection:
    """A connection to the `postgres` maintenance database (never to the run's own)."""
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True)


@dataclass
class ChaosEnvironment:
    """The run's database and vhost, and the environment its processes get.

    `kind` names the run in the database and vhost; `process_env` is what its processes get on
    top of this process's environment (the chaos run's retry policy by default). With `cluster`,
    the broker is that RabbitMQ cluster (every node in the URL list), not the machine's node.
    """

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    kind: str = "chaos"
    process_env: dict[str, str] = field(default_factory=lambda: dict(PROCESS_ENV))
    cluster: RabbitCluster | None = None

    @property
    def database(self) -> str:
        return f"ordering_{self.kind}_{self.run_id}"

    @property
    def vhost(self) -> str:
        return f"ordering-{self.kind}-{self.run_id}"

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{PG_HOST}:{PG_PORT}/{self.database}"

    @property
    def broker_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.urls(self.vhost)
        return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{self.vhost}"

    def rabbitmqctl(self, *args: str) -> subprocess.CompletedProcess:
        """rabbitmqctl against the run's broker: the machine's node, or a running node of the cluster."""
        if self.cluster is not None:
            return self.cluster.ctl_any(*args, timeout=60)
        return rabbitmqctl(*args, timeout=60)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.process_env,
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "DJANGO_SETTINGS_MODULE": "ordering.settings",
        }

    def missing_services(self) -> list[str]:
        missing = []
        if not reachable(PG_HOST, PG_PORT):
            missing.append(f"PostgreSQL on {PG_HOST}:{PG_PORT}")
        if self.cluster is not None:
            missing += [
                f"RabbitMQ node {self.cluster.node(n)}" for n in self.cluster.nodes if not self.cluster.running(n)
            ]
            return missing
        if not reachable(AMQP_HOST, AMQP_PORT):
            missing.append(f"RabbitMQ on {AMQP_HOST}:{AMQP_PORT}")
        # The node is shared: another test run may be between its own stop_app and start_app.
        deadline = time.monotonic() + 90
        while True:
            try:
                rabbitmqctl("status", timeout=60)
                break
            except (OSError, subprocess.SubprocessError) as exc:
                if time.monotonic() > deadline or isinstance(exc, OSError):
                    detail = str(getattr(exc, "stderr", "") or exc).strip()[:300]
                    missing.append(f"rabbitmqctl, run as a user allowed to control the node ({detail})")
                    break
                time.sleep(2)
        return missing

    def create(self) -> None:
        with admin_connection() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.rabbitmqctl("add_vhost", self.vhost)
        self.rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.rabbitmqctl("delete_vhost", self.vhost)
        with contextlib.suppress(Exception), admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database)))

    def terminate_backends(self) -> int:
        """pg_terminate_backend every connection to the run's database; returns how many."""
        with admin_connection() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.database],
            ).fetchall()
        return sum(1 for (done,) in rows if done)


WEB_WORKERS = 3
WORKER_CONCURRENCY = 2
WORKERS_PER_QUEUE = 2
RELAYS = 2


def build_processes(environment: ChaosEnvironment, log_dir: Path, port: int) -> ProcessGroup:
    """The production shape: a web server with several workers, two relays, two workers per queue."""
    from ordering import catalogue

    group = ProcessGroup(env=environment.env(), log_dir=log_dir)
    group.add_web("web", port, workers=WEB_WORKERS)
    for n in range(1, RELAYS + 1):
        group.add_relay(f"relay-{n}")
    for queue in catalogue.CONSUMER_QUEUES:
        app_name = queue.split(".")[0]
        for n in range(1, WORKERS_PER_QUEUE + 1):
            group.add_worker(f"{app_name}-{n}", queue, concurrency=WORKER_CONCURRENCY)
    return group


def wait_for_web(base_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base_url}/health/", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"web server at {base_url} not healthy after {timeout}s")
