"""Settings for running behind a connection pooler (PgBouncer in transaction mode), read from the environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POOLER_VARIABLES = ("DB_DISABLE_SERVER_SIDE_CURSORS", "DATABASE_LISTEN_URL")


def settings_with(**variables: str) -> dict:
    """The database settings a fresh process builds from this environment plus `variables` (settings are read once)."""
    env = {key: value for key, value in os.environ.items() if key not in POOLER_VARIABLES}
    code = (
        "import json; from django.conf import settings; "
        "print(json.dumps({'default': settings.DATABASES['default'], 'listen': settings.MESSAGING['LISTEN_DATABASE']}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "ordering.settings", **variables},
        timeout=60,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_server_side_cursors_stay_on_unless_disabled():
    assert settings_with()["default"]["DISABLE_SERVER_SIDE_CURSORS"] is False
    assert settings_with(DB_DISABLE_SERVER_SIDE_CURSORS="true")["default"]["DISABLE_SERVER_SIDE_CURSORS"] is True


def test_listen_database_is_the_default_one_unless_a_listen_url_is_set():
    assert settings_with()["listen"] is None
    direct = settings_with(
        DATABASE_URL="postgres://ordering:pooled@pgbouncer:6432/ordering",
        DATABASE_LISTEN_URL="postgres://ordering:direct@postgres:5432/ordering?application_name=relay-listen",
    )
    assert direct["default"]["HOST"] == "pgbouncer"
    listen = direct["listen"]
    assert (listen["HOST"], listen["PORT"], listen["NAME"]) == ("postgres", 5432, "ordering")
    assert (listen["USER"], listen["PASSWORD"]) == ("ordering", "direct")
    assert listen["OPTIONS"] == {"application_name": "relay-listen"}
