"""The messaging tables' periodic job (Celery beat, maintenance queue)."""

from ordering import catalogue
from ordering.celery import maintenance_task
from ordering.messaging.retention import messaging_purge_expired


@maintenance_task(catalogue.MESSAGING_PURGE_EXPIRED)
def purge_expired() -> None:
    """Periodic: delete published outbox rows, inbox rows and task records past their retention."""
    messaging_purge_expired()
