"""A broker given as the nodes of a cluster: each process starts on the node its own shuffle put first."""

import os
import subprocess
import sys

from tests.processes import ROOT

NODES = [f"amqp://guest:guest@127.0.0.1:{port}/cluster-check" for port in (5701, 5702, 5703)]

# The shuffle made predictable (it reverses the list), then what Celery would connect to first.
PROBE = """
import random
random.sample = lambda population, k: list(reversed(population))[:k]
import django
django.setup()
from django.conf import settings
from ordering.celery import app
print(settings.CELERY_BROKER_URL)
print(app.connection_for_write().port)
"""


def test_celery_connects_first_to_the_node_the_settings_put_first_not_to_the_first_of_the_environment():
    env = {**os.environ, "CELERY_BROKER_URL": ";".join(NODES), "DJANGO_SETTINGS_MODULE": "ordering.settings"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    broker_url, first_port = result.stdout.split()[-2:]

    assert broker_url.split(";") == list(reversed(NODES))
    assert first_port == "5703"
