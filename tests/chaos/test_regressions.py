"""Regression tests for pipeline bugs the chaos run found, each reproduced without the full run."""

import uuid

import pytest
from django.db import OperationalError, connection
from django_celery_results.models import TaskResult

from ordering.celery import app
from ordering.messaging.results import ResultBackend
from tests.services import terminate_own_connection

pytestmark = pytest.mark.django_db(transaction=True)


def break_this_connection() -> None:
    """pg_terminate_backend this test's own connection, then fail a query on it, as a task would."""
    terminate_own_connection()
    with pytest.raises(OperationalError), connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_the_app_stores_results_with_the_project_backend():
    assert isinstance(app.backend, ResultBackend)


@pytest.mark.parametrize("state", ["retry", "failure"])
def test_a_retry_or_failure_is_stored_after_the_task_broke_its_database_connection(state):
    # Found by the chaos run (db_terminate_backends): a task failing on a terminated connection
    # called retry(); storing the RETRY state through the dead connection raised, so Celery
    # failed the task and dead-lettered a message whose retry went on to succeed.
    break_this_connection()
    task_id = str(uuid.uuid4())
    exc = OperationalError("terminating connection due to administrator command")
    if state == "retry":
        app.backend.mark_as_retry(task_id, exc, traceback="")
    else:
        app.backend.mark_as_failure(task_id, exc, traceback="")
    assert TaskResult.objects.get(task_id=task_id).status == state.upper()
