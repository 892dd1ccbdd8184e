"""Settings of the benchmark's own process and of its ceiling processes.

The production settings plus the ceiling app (a trivial DRF create and a Celery no-op chain),
and queues created on demand for the chain (quorum, like the system's own consumer queues).
The system under test never runs with these: its processes get ordering.settings.
"""

from ordering.settings import *  # noqa: F403
from ordering.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.bench.ceiling"]
ROOT_URLCONF = "tests.bench.ceiling.urls"
CELERY_TASK_CREATE_MISSING_QUEUES = True
CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
