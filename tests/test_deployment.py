"""The ways to run the system agree: Procfile (make run) and docker-compose.yml (docker compose up)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_for_docker_compose():
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed (.ci/run installs it) and CI must check the compose file")
        pytest.skip("docker-compose not installed: apt-get install docker-compose")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], check=False, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_procfile_process():
    services = compose()["services"]
    for name, command in procfile().items():
        assert name in services, f"Procfile process {name!r} has no compose service"
        program = command.split()[0]
        assert services[name]["command"][0] == program


def test_compose_services_have_healthchecks_and_wait_for_dependencies():
    services = compose()["services"]
    for name in ("postgres", "rabbitmq", "web", "relay", "billing", "orders", "flower"):
        assert "healthcheck" in services[name], name
    for name in ("web", "relay", "billing", "orders"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_web_binds_to_port_variable_in_procfile():
    assert "${PORT:-8000}" in procfile()["web"]
