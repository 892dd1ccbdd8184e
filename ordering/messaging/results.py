"""The task result backend: django-celery-results, writing through a database connection that works."""

from django.db import connection
from django_celery_results.backends.database import DatabaseBackend


class ResultBackend(DatabaseBackend):
    """django-celery-results' database backend that first replaces a connection a failure broke.

    A consumer task that failed on a database error (a PostgreSQL restart, pg_terminate_backend)
    leaves its connection broken, and Celery stores the retry or the final failure right after,
    through that same connection. Without this the write raises: Celery then fails the task
    "outside the body" although its retry was already published (a spurious dead letter of an
    event that is processed anyway), and a final failure is dead-lettered without its record.
    """

    def _store_result(self, *args: object, **kwargs: object) -> object:
        if not connection.in_atomic_block:  # inside a caller's transaction (a test) it is in use
            connection.close_if_unusable_or_obsolete()
        return super()._store_result(*args, **kwargs)
