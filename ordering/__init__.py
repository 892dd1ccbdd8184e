"""The ordering project: Django settings, the Celery app and the URL map."""

from ordering.celery import app as celery_app

__all__ = ("celery_app",)
