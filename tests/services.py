"""The machine's PostgreSQL and RabbitMQ as the tests see them: reachability, rabbitmqctl, killed connections."""

import socket
import subprocess

import psycopg
from django.db import connection


def reachable(host: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, text=True, timeout=timeout)


def rabbitmq_start_app() -> None:
    """start_app, then wait until the node serves again."""
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")


def terminate_own_connection() -> None:
    """pg_terminate_backend the current Django connection, as a database restart would."""
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
