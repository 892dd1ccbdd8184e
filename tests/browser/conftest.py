"""The browser test: headless Chromium from the system's packages drives the admin of the running system."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from ordering.celery import app
from ordering.messaging.topology import declare_topology
from tests.chaos.system import free_port, wait_for_web
from tests.conftest import purge_consumer_queues
from tests.integration.conftest import process_env
from tests.processes import ROOT, ProcessGroup

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
OPERATOR_PASSWORD = "browser-test-password"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the admin in headless Chromium against the running system")


@pytest.fixture
def browser():
    """Headless Chromium through the system's chromedriver; nothing is downloaded (no Selenium Manager)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test needs Chromium and CI must run it: {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def running_system(transactional_db, tmp_path):
    """web (gunicorn, DEBUG off, static files collected), relay and one worker per queue; yields web's URL."""
    with app.connection_for_write() as conn:
        declare_topology(conn)
        purge_consumer_queues(conn)  # the test counts what reaches the DLQ: only its own messages
    env = {**process_env(), "SECRET_KEY": "browser-test-only", "DEBUG": "false", "SECURE_SSL_REDIRECT": "false"}
    env.update(SESSION_COOKIE_SECURE="false", CSRF_COOKIE_SECURE="false")
    # WhiteNoise serves the admin's CSS from STATIC_ROOT when DEBUG is off.
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    port = free_port()
    group = ProcessGroup(env=env, log_dir=tmp_path)
    group.add_web("web", port, workers=1)
    group.add_relay()
    group.add_worker("billing", "billing.events", concurrency=1)
    group.add_worker("orders", "orders.events", concurrency=1)
    try:
        group.start_all()
        wait_for_web(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        group.stop_all()


@pytest.fixture
def operator(transactional_db):
    """A staff user with exactly the permissions an operator fixing dead letters needs."""
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username="operator", password=OPERATOR_PASSWORD, is_staff=True)
    codenames = ["view_order", "view_deadletter", "replay_deadletter", "discard_deadletter", "view_deadletteraction"]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user
