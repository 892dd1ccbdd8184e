"""The idempotency keys' periodic job (Celery beat, maintenance queue)."""

from ordering import catalogue
from ordering.celery import maintenance_task
from ordering.idempotency.keys import idempotency_keys_purge


@maintenance_task(catalogue.IDEMPOTENCY_PURGE_EXPIRED_KEYS)
def purge_expired_keys() -> int:
    """Periodic: delete expired idempotency keys (as `manage.py purge_idempotency_keys`); how many."""
    return idempotency_keys_purge()
