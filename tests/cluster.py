"""A RabbitMQ cluster on this machine, for the cluster tests and the chaos run's --cluster mode.

It is the cluster of scripts/rabbitmq-cluster.sh (what `make cluster` starts), under a name and
ports of its own: the tests use `ordering-test` on 5683-5685, so they never disturb a cluster a
developer runs, nor the machine's own node on 5672. Nodes are found by name (`rabbitmqctl -n`) and
killed by the pid file each node writes in its data folder.
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.processes import ROOT

SCRIPT = ROOT / "scripts" / "rabbitmq-cluster.sh"


@dataclass(frozen=True)
class RabbitCluster:
    name: str = "ordering"
    port_base: int = 5673
    size: int = 3

    @property
    def nodes(self) -> range:
        """The nodes' numbers: 1, 2, 3."""
        return range(1, self.size + 1)

    def node(self, n: int) -> str:
        return f"{self.name}-{n}@localhost"

    def port(self, n: int) -> int:
        return self.port_base + n - 1

    def url(self, n: int, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port(n)}/{vhost}"

    def urls(self, vhost: str, nodes: Iterable[int] | None = None) -> str:
        """CELERY_BROKER_URL for `vhost`: every node (or `nodes`, in that order), separated by ';'."""
        return ";".join(self.url(n, vhost) for n in (self.nodes if nodes is None else nodes))

    def _script(self, action: str, timeout: float = 600) -> str:
        env = {**os.environ, "CLUSTER_NAME": self.name, "CLUSTER_PORT_BASE": str(self.port_base)}
        env["CLUSTER_SIZE"] = str(self.size)
        result = subprocess.run(
            [str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmq-cluster.sh {action} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self) -> list[int]:
        """Start the nodes that are not running (all, or one that was killed); returns which were started."""
        down = [n for n in self.nodes if not self.running(n)]
        if down:
            self._script("start")
        return down

    def stop(self) -> None:
        self._script("stop")

    def ctl(self, n: int, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """rabbitmqctl against node `n`."""
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node(n), *args], check=check, capture_output=True, text=True, timeout=timeout
        )

    def running(self, n: int) -> bool:
        """Node `n`'s Erlang VM runs (it answers a ping also while its RabbitMQ app is stopped)."""
        try:
            return self.ctl(n, "-q", "ping", check=False, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ctl_any(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """rabbitmqctl against the first node that answers it: any member knows the whole cluster."""
        failures = []
        for n in self.nodes:
            try:
                return self.ctl(n, *args, timeout=timeout)
            except subprocess.CalledProcessError as exc:
                failures.append(f"{self.node(n)}: {(exc.stderr or exc.stdout).strip()[:200]}")
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: no node of {self.name!r} answered: {failures}")

    def pid(self, n: int) -> int | None:
        """The OS process of node `n` (its pid file), or None if it does not run."""
        pid_file = ROOT / "tmp" / "rabbitmq-cluster" / self.name / str(n) / "mnesia" / f"{self.node(n)}.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path(pid_file).read_text().strip())
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return pid
        return None

    def kill(self, n: int) -> int:
        """SIGKILL node `n`, as a crash of its machine would; returns once the process is gone."""
        pid = self.pid(n)
        if pid is None:
            raise RuntimeError(f"node {self.node(n)} does not run")
        process = psutil.Process(pid)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return pid

    def stop_app(self, n: int) -> None:
        """Stop RabbitMQ on node `n` but not its Erlang VM: its clients are cut off, the node stays known."""
        self.ctl(n, "stop_app")

    def start_app(self, n: int) -> None:
        self.ctl(n, "start_app")
        self.ctl(n, "await_startup")

    def queues(self, vhost: str) -> list[dict]:
        """Every queue of `vhost` with its type, leader, members, consumers and message counts."""
        columns = ["name", "type", "leader", "members", "consumers", "messages_ready", "messages_unacknowledged"]
        result = self.ctl_any("list_queues", "-q", "-p", vhost, *columns, "--formatter", "json")
        return json.loads(result.stdout or "[]")

    def leader(self, vhost: str, queue: str) -> int:
        """The number of the node that leads `queue` now."""
        for entry in self.queues(vhost):
            if entry["name"] == queue:
                return next(n for n in self.nodes if self.node(n) == entry["leader"])
        raise LookupError(f"no queue {queue!r} in vhost {vhost!r}")

    def wait_for_leader(self, vhost: str, queue: str, *, not_on: int, timeout: float = 60) -> int:
        """The node that leads `queue` once a node other than `not_on` does (an election after its loss)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(StopIteration, LookupError, subprocess.SubprocessError, RuntimeError):
                leader = self.leader(vhost, queue)
                if leader != not_on:
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue} has no leader other than {self.node(not_on)} after {timeout}s")
            time.sleep(0.5)

    def add_vhost(self, vhost: str) -> None:
        self.ctl_any("add_vhost", vhost)
        self.ctl_any("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        with contextlib.suppress(RuntimeError):
            self.ctl_any("delete_vhost", vhost)


# The cluster the test suite starts and stops itself (tests/node_loss), apart from `make cluster`'s.
TEST_CLUSTER = RabbitCluster(name="ordering-test", port_base=5683)
