"""The ways to run the system agree (Procfile for make run, docker-compose.yml) and are safe to deploy:
production settings pass `check --deploy`, a process without a secret key refuses to start, slow clients do not
starve web; compose's cluster profile makes a three-node RabbitMQ cluster that every process reaches."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from django.db import connection
from kombu import Connection

from tests.chaos.system import free_port, wait_for_web
from tests.processes import BIN, ManagedProcess

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
# What docker-compose.yml requires (it has no default for any of them); dummy values to validate it.
COMPOSE_SECRETS = {
    "SECRET_KEY": "compose-check-only",
    "POSTGRES_PASSWORD": "pg",
    "RABBITMQ_ADMIN_PASSWORD": "admin",
    "RABBITMQ_TOPOLOGY_PASSWORD": "topology",
    "RABBITMQ_RELAY_PASSWORD": "relay",
    "RABBITMQ_BILLING_PASSWORD": "billing",
    "RABBITMQ_ORDERS_PASSWORD": "orders",
    "RABBITMQ_FLOWER_PASSWORD": "flower",
    "RABBITMQ_CONSOLE_PASSWORD": "console",
    "RABBITMQ_ERLANG_COOKIE": "cookie",
    "FLOWER_BASIC_AUTH": "admin:flower",
}
CLUSTER_PROFILE = "cluster"
CLUSTER_CONFIG = ROOT / "deploy" / "rabbitmq-cluster.conf"


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def docker_compose(*args: str, secrets: bool = True) -> subprocess.CompletedProcess:
    """`docker-compose -f docker-compose.yml ARGS`, with the dummy secrets unless `secrets` is false."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed (.ci/run installs it) and CI must check the compose file")
        pytest.skip("docker-compose not installed: apt-get install docker-compose")
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, **COMPOSE_SECRETS} if secrets else env,
    )


def test_compose_file_is_valid_for_docker_compose():
    for profile in ([], ["--profile", CLUSTER_PROFILE]):
        result = docker_compose(*profile, "config", "-q")
        assert result.returncode == 0, (profile, result.stderr)
        # Without them compose refuses: no secret has a default.
        result = docker_compose(*profile, "config", "-q", secrets=False)
        assert result.returncode != 0
        assert "set " in result.stderr


def test_compose_publishes_only_the_api_on_every_interface_through_the_buffering_proxy():
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            if name != "proxy":
                assert port.startswith("127.0.0.1:"), (name, port)
    assert services["proxy"]["ports"] == ["8000:8080"]
    assert "ports" not in services["web"]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server web:8000;" in config
    assert "client_header_timeout 10s;" in config


def test_compose_has_no_default_secrets():
    text = COMPOSE.read_text()
    for variable in COMPOSE_SECRETS:
        assert f"${{{variable}:?" in text, variable
        assert f"${{{variable}:-" not in text, variable


def gunicorn_config(command: str) -> dict[str, str]:
    """gunicorn's fully resolved settings for `command`, run from the repository root (gunicorn.conf.py)."""
    env = {**os.environ, "PORT": "8000", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["/bin/sh", "-c", f"exec {command} --print-config"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    pairs = (line.split(" = ", 1) for line in result.stdout.splitlines() if " = " in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_web_runs_gthread_without_control_socket_in_procfile_and_compose():
    web = compose()["services"]["web"]
    for command in (procfile()["web"], " ".join(web["command"])):
        config = gunicorn_config(command)
        assert config["worker_class"] == "gthread", command
        assert config["control_socket_disable"] == "True", command
    graceful = int(gunicorn_config(" ".join(web["command"]))["graceful_timeout"])
    assert int(web["stop_grace_period"].rstrip("s")) > graceful


def test_compose_runs_every_procfile_process():
    services = compose()["services"]
    for name, command in procfile().items():
        assert name in services, f"Procfile process {name!r} has no compose service"
        program = command.split()[0]
        assert services[name]["command"][0] == program


def test_compose_services_have_healthchecks_and_wait_for_dependencies():
    services = compose()["services"]
    for name in ("postgres", "rabbitmq", "redis", "web", "proxy", "relay", "billing", "orders", "flower"):
        assert "healthcheck" in services[name], name
    for name in ("web", "relay", "billing", "orders"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_web_binds_to_port_variable_in_procfile():
    assert "${PORT:-8000}" in procfile()["web"]


# --- The cluster profile ---------------------------------------------------------------------------------------
def active(services: dict, profiles: set[str]) -> dict:
    """The services `docker compose up` starts with these profiles enabled."""
    return {name: s for name, s in services.items() if not s.get("profiles") or profiles & set(s["profiles"])}


def rabbitmq_nodes(services: dict) -> dict:
    return {name: s for name, s in services.items() if s.get("image", "").startswith("rabbitmq:")}


def node_name(service: dict) -> str:
    """The Erlang node name RabbitMQ takes: RABBITMQ_NODENAME, else rabbit@<hostname>."""
    return service.get("environment", {}).get("RABBITMQ_NODENAME") or f"rabbit@{service['hostname']}"


def test_compose_cluster_profile_adds_two_rabbitmq_nodes_sharing_one_cookie():
    services = compose()["services"]
    assert set(rabbitmq_nodes(active(services, set()))) == {"rabbitmq"}
    nodes = rabbitmq_nodes(active(services, {CLUSTER_PROFILE}))
    assert set(nodes) == {"rabbitmq", "rabbitmq-2", "rabbitmq-3"}
    assert len({node["image"] for node in nodes.values()}) == 1
    # One cookie source, required (no default: see test_compose_has_no_default_secrets).
    cookies = {node["environment"]["RABBITMQ_ERLANG_COOKIE"] for node in nodes.values()}
    assert cookies == {"${RABBITMQ_ERLANG_COOKIE:?set RABBITMQ_ERLANG_COOKIE}"}
    data = [next(v for v in node["volumes"] if v.endswith(":/var/lib/rabbitmq")) for node in nodes.values()]
    assert len(set(data)) == 3, data
    assert all(node.get("healthcheck") for node in nodes.values())
    assert len({node_name(node) for node in nodes.values()}) == 3


def test_compose_cluster_peer_discovery_lists_exactly_the_profile_nodes():
    nodes = rabbitmq_nodes(active(compose()["services"], {CLUSTER_PROFILE}))
    settings = dict(
        line.split(" = ", 1) for line in CLUSTER_CONFIG.read_text().splitlines() if line and not line.startswith("#")
    )
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = [value for key, value in settings.items() if key.startswith("cluster_formation.classic_config.nodes.")]
    assert sorted(listed) == sorted(node_name(node) for node in nodes.values())
    # The nodes that join mount the list next to the image's own configuration.
    for name in ("rabbitmq-2", "rabbitmq-3"):
        assert "./deploy/rabbitmq-cluster.conf:/etc/rabbitmq/conf.d/30-cluster.conf:ro" in nodes[name]["volumes"]


def broker_endpoints(url: str) -> list[tuple[str, int, str, str]]:
    """(host, port, user, vhost) of every entry of a broker URL, as kombu connects to each (failover list too)."""
    broker = Connection(url)
    endpoints = []
    for _ in range(max(len(broker.alt), 1)):
        endpoints.append((broker.hostname, broker.port, broker.userid, broker.virtual_host))
        if broker.alt:
            broker.maybe_switch_next()
    return endpoints


def test_compose_app_services_reach_every_rabbitmq_node_as_one_user_and_vhost():
    """Every process's broker URL (as compose resolves it) reaches each node that runs, with and without the profile."""
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for profiles in (set(), {CLUSTER_PROFILE}):
        running = active(services, profiles)
        nodes = rabbitmq_nodes(running)
        # A name on the compose network answers for each service that has it as its name or an alias.
        answering: dict[str, set[str]] = {}
        for name, node in nodes.items():
            for alias in [name, *node.get("networks", {}).get("default", {}).get("aliases", [])]:
                answering.setdefault(alias, set()).add(name)
        clients = {
            name: s["environment"]["CELERY_BROKER_URL"]
            for name, s in running.items()
            if "CELERY_BROKER_URL" in s.get("environment", {})
        }
        assert {"web", "relay", "billing", "orders", "beat", "flower", "migrate"} <= set(clients)
        for name, url in clients.items():
            endpoints = broker_endpoints(url)
            reached = set().union(*(answering.get(host, set()) for host, *_ in endpoints))
            assert reached == set(nodes), (profiles, name, endpoints)
            assert {port for _, port, _, _ in endpoints} == {5672}, (name, endpoints)
            assert len({(user, vhost) for _, _, user, vhost in endpoints}) == 1, (name, endpoints)


def test_broker_name_with_several_addresses_connects_to_the_first_that_accepts(monkeypatch):
    """What the cluster profile relies on: a name that resolves to every node's address (Docker's DNS for a shared
    alias) is enough for a client to find a running node; a stopped node's address is skipped."""
    resolve = socket.getaddrinfo
    stopped = ("127.0.0.1", free_port())
    running = ("127.0.0.1", 5672)

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "rabbitmq-nodes":
            return resolve(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address) for address in (stopped, running)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    test_broker = Connection(os.environ["CELERY_BROKER_URL"])
    url = f"amqp://{test_broker.userid}:{test_broker.password}@rabbitmq-nodes:5672/{test_broker.virtual_host}"
    with Connection(url, connect_timeout=5) as broker:
        broker.connect()
        assert broker.connected
        assert broker.connection.sock.getpeername()[:2] == running


# --- Production settings -------------------------------------------------------------------------------------
def production_env(**overrides: str) -> dict[str, str]:
    """This environment without the test run's relaxations (SECURE_*, cookies), as production would run."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SECURE_", "SESSION_COOKIE_", "CSRF_COOKIE_", "DEBUG", "SECRET_KEY"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="ordering.settings",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="orders.example.com",
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
    )
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_web_without_secret_key_refuses_to_start_and_tooling_still_runs():
    env = production_env()
    del env["SECRET_KEY"]
    web = subprocess.run(
        [sys.executable, "-c", "import ordering.wsgi"], check=False, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert web.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set and DEBUG is off" in web.stderr
    assert manage("makemigrations", "--check", "--dry-run", env=env).returncode == 0


# --- Slow clients ----------------------------------------------------------------------------------------------
SLOW_CLIENTS = 4


def slow_client(port: int) -> socket.socket:
    """A connection that starts a request and never finishes its headers (slowloris, at its slowest)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /health/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")
    return sock


def test_slow_clients_do_not_starve_web(db, tmp_path):
    """Web started with the Procfile's own command still answers /health/ while slow clients hold connections.

    With gunicorn's sync worker (two workers) the first two of these connections each hold a worker until
    gunicorn's 30 s worker timeout, and /health/ gets no answer meanwhile.
    """
    db = connection.settings_dict
    port = free_port()
    web = ManagedProcess(
        name="web",
        command=["/bin/sh", "-c", f"exec {procfile()['web']}"],
        env={
            **os.environ,
            # The Procfile names gunicorn as honcho finds it: on PATH.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PORT": str(port),
            "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        },
        log_path=tmp_path / "web.log",
        ready_marker="",
    )
    clients: list[socket.socket] = []
    try:
        web.start()
        try:
            wait_for_web(f"http://127.0.0.1:{port}", timeout=60)
        except TimeoutError as exc:
            raise AssertionError(web.log_text()[-3000:]) from exc
        clients = [slow_client(port) for _ in range(SLOW_CLIENTS)]
        started = time.monotonic()
        response = requests.get(f"http://127.0.0.1:{port}/health/", timeout=5)
        assert response.status_code == 200
        assert time.monotonic() - started < 3
    finally:
        for client in clients:
            client.close()
        web.stop()


def test_env_example_names_every_secret_compose_requires():
    example = (ROOT / ".env.example").read_text()
    named = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert named == set(COMPOSE_SECRETS)
