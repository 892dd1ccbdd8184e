"""Run the system's processes (Procfile commands) as real OS processes, for integration and chaos runs.

Each process writes its output to a log file; `wait_for_log` watches it for readiness. Processes
can be killed with any signal (a pool child, a worker main process, the relay, a web worker) and
started again, as a supervisor would. Each is a process group of its own for Prometheus: its own
multiprocess directory, and the relay and workers an exporter port (`metrics_port`).
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def worker_command(queue: str, hostname: str, concurrency: int = 2) -> list[str]:
    return [
        str(BIN / "celery"), "-A", "ordering", "worker", "--queues", queue, "--hostname", hostname,
        "--concurrency", str(concurrency), "--without-mingle", "--without-gossip", "--loglevel", "INFO",
    ]  # fmt: skip


RELAY_COMMAND = [sys.executable, "manage.py", "run_outbox_relay"]


def beat_command(schedule: Path) -> list[str]:
    return [str(BIN / "celery"), "-A", "ordering", "beat", "--schedule", str(schedule), "--loglevel", "INFO"]


def web_command(port: int, workers: int = 2) -> list[str]:
    return [
        str(BIN / "gunicorn"), "ordering.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--graceful-timeout", "5", "--timeout", "30",
    ]  # fmt: skip


@dataclass
class ManagedProcess:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    ready_marker: str
    popen: subprocess.Popen | None = None
    log_offset: int = 0
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 60) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_for_log(self.ready_marker, timeout=timeout)

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def wait_for_log(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log_text():
                return
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_text()[-3000:]}")

    def children(self) -> list[psutil.Process]:
        """Pool processes (celery) or web workers (gunicorn) of this process."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the main process only (its children see what a real crash leaves them)."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL the whole process group: main process and children, as a machine crash would."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not finish in time."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
        # Children (pool processes, gunicorn workers) must not outlive the test either.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


@dataclass
class ProcessGroup:
    """A set of the system's processes sharing one environment and one log directory."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def add(
        self, name: str, command: list[str], ready_marker: str, *, exporter: bool = False, **env: str
    ) -> ManagedProcess:
        """`exporter`: the process serves its metrics on a port of its own (METRICS_PORT)."""
        metrics_port = free_port() if exporter else None
        metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(self.log_dir / "metrics" / name)}
        if metrics_port is not None:
            metrics_env["METRICS_PORT"] = str(metrics_port)
        process = ManagedProcess(
            name=name, command=command, env={**self.env, **metrics_env, **env},
            log_path=self.log_dir / f"{name}.log", ready_marker=ready_marker, metrics_port=metrics_port,
        )  # fmt: skip
        self.processes[name] = process
        return process

    def add_worker(self, name: str, queue: str, concurrency: int = 2, **env: str) -> ManagedProcess:
        return self.add(name, worker_command(queue, f"{name}@%h", concurrency), "ready.", exporter=True, **env)

    def add_relay(self, name: str = "relay", **env: str) -> ManagedProcess:
        return self.add(name, RELAY_COMMAND, "relay: started", exporter=True, **env)

    def add_beat(self, name: str = "beat", **env: str) -> ManagedProcess:
        return self.add(name, beat_command(self.log_dir / f"{name}-schedule"), "beat: Starting", **env)

    def add_web(self, name: str, port: int, workers: int = 2, **env: str) -> ManagedProcess:
        return self.add(name, web_command(port, workers), "Booting worker", **env)

    def __getitem__(self, name: str) -> ManagedProcess:
        return self.processes[name]

    def start_all(self) -> None:
        for process in self.processes.values():
            process.start()

    def restart(self, name: str) -> None:
        process = self.processes[name]
        process.stop()
        process.start()

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
