"""The system as production runs it: one process per Procfile entry, with the Procfile's own command.

Each entry runs under `sh -c "exec <command>"`, so its variables (${PORT:-8000}, ...) expand as
honcho would expand them and the process is the command itself. Readiness is checked from the
outside, whatever the log level: web answers /health/, the relay touches its heartbeat file,
each worker has a consumer on its queue.
"""

import os
import time
from pathlib import Path

from ordering import catalogue
from tests.chaos.system import ChaosEnvironment, wait_for_web
from tests.processes import BIN, ROOT, ProcessGroup

PROCFILE = ROOT / "Procfile"


def procfile_commands() -> dict[str, str]:
    commands = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


def worker_queue(command: str) -> str:
    """The (first) queue a Procfile worker command consumes (its --queues argument)."""
    words = command.split()
    return words[words.index("--queues") + 1].split(",")[0]


class System:
    """Procfile processes on the benchmark's database and vhost."""

    def __init__(
        self,
        environment: ChaosEnvironment,
        log_dir: Path,
        port: int,
        commands: dict[str, str],
        **env: str,
    ) -> None:
        self.port = port
        self.heartbeat = log_dir / f"relay-heartbeat-{port}"
        base = environment.env()
        self.group = ProcessGroup(
            env={
                **base,
                **env,
                # The Procfile names gunicorn, celery and python as honcho finds them: on PATH.
                "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
                "PORT": str(port),
                "RELAY_HEARTBEAT_FILE": str(self.heartbeat),
            },
            log_dir=log_dir,
        )
        self.commands = commands
        for name, command in commands.items():
            # An empty marker: start() returns at once and wait_ready() checks from outside.
            self.group.add(name, ["/bin/sh", "-c", f"exec {command}"], ready_marker="")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        self.heartbeat.unlink(missing_ok=True)
        self.group.start_all()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name, command in self.commands.items():
            process = self.group[name]
            if name == "web":
                wait_for_web(self.base_url, timeout=max(1.0, deadline - time.monotonic()))
            elif "run_outbox_relay" in command:
                self._wait(self.heartbeat.exists, deadline, process, "relay heartbeat")
            elif " worker " in command:
                queue = worker_queue(command)
                self._wait(lambda q=queue: consumers(q) > 0, deadline, process, f"a consumer on {queue}")

    @staticmethod
    def _wait(predicate, deadline: float, process, what: str) -> None:
        while time.monotonic() < deadline:
            if predicate():
                return
            if process.popen is not None and process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited ({process.popen.returncode}):\n{process.log_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{process.name}: no {what} after the timeout:\n{process.log_text()[-3000:]}")

    def roots(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.group.processes.items()}

    def stop(self) -> None:
        self.group.stop_all()


def consumers(queue: str) -> int:
    from amqp.exceptions import NotFound

    from ordering.celery import app

    with app.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(queue=queue, passive=True).consumer_count
        except NotFound:
            return 0


def queue_depth(queue: str) -> int:
    from ordering.celery import app

    with app.connection_for_write() as connection:
        return connection.default_channel.queue_declare(queue=queue, passive=True).message_count


def pipeline_commands() -> dict[str, str]:
    return procfile_commands()


def chain_commands() -> dict[str, str]:
    """The Procfile's two worker commands, consuming the no-op chain's queues instead."""
    from tests.bench.ceiling.tasks import FIRST_QUEUE, SECOND_QUEUE

    commands = procfile_commands()
    swap = {catalogue.BILLING_QUEUE: FIRST_QUEUE, catalogue.ORDERS_QUEUE: SECOND_QUEUE}
    chain = {}
    for name, command in commands.items():
        if " worker " in command and worker_queue(command) in swap:
            queue = worker_queue(command)
            chain[name] = command.replace(f"--queues {queue}", f"--queues {swap[queue]}")
    return chain
