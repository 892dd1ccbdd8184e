"""Log records as operators read them: the ids of the request or event being handled, as fields.

LOGGING in ordering/settings.py wires these into every process: web (gunicorn and Django), the
relay and the Celery workers, JSON lines (LOG_FORMAT=json) or readable text (LOG_FORMAT=text).
"""

import logging
import logging.config
from collections.abc import Mapping
from typing import Any

from celery.utils.log import get_multiprocessing_logger

from ordering.messaging.context import current_correlation_id, current_log_fields


def configure(config: dict[str, Any]) -> None:
    """Django's LOGGING_CONFIG: LOGGING, and Python's warnings as log lines (Django leaves them raw on stderr)."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


# Where web's middleware leaves the order a request concerned, in the WSGI environ: gunicorn
# writes its access line after Django is done, from the environ and the response.
ORDER_ID_ENVIRON_KEY = "ordering.order_id"


class ContextFilter(logging.Filter):
    """Puts the correlation id, event id and order id of the request or event being handled on a record.

    Fields a log call passed itself (`extra`) win. A few attribute lookups per record, nothing more:
    the consumers log a line or two per message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if "correlation_id" not in fields and (correlation_id := current_correlation_id()):
            fields["correlation_id"] = correlation_id
        for name, value in current_log_fields().items():
            fields.setdefault(name, value)
        return True


class AccessLogFilter(logging.Filter):
    """gunicorn's access line as fields: method, path, status, duration, correlation id and order id.

    gunicorn logs it with its "atoms" (request, response and environ values) as the record's
    arguments; the correlation id is the response's header (the middleware set it, whatever the
    client sent), the order id the one the middleware left in the environ.
    """

    def __init__(self, correlation_id_header: str, name: str = "") -> None:
        super().__init__(name)
        self.correlation_id_atom = f"{{{correlation_id_header.lower()}}}o"
        self.order_id_atom = f"{{{ORDER_ID_ENVIRON_KEY}}}e"

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if not isinstance(atoms, Mapping):
            return True
        record.method = atoms.get("m")
        record.path = atoms.get("U")
        record.status = _int_or_none(atoms.get("s"))
        record.duration_ms = round(atoms.get("D", 0) / 1000, 3)
        if (correlation_id := atoms.get(self.correlation_id_atom)) is not None:
            record.correlation_id = correlation_id
        if (order_id := atoms.get(self.order_id_atom)) is not None:
            record.order_id = order_id
        return True


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- Celery workers ------------------------------------------------------------------------------


def celery_keeps_django_logging(**kwargs: Any) -> None:
    """Receiver of Celery's setup_logging: the worker's logging is Django's LOGGING, nothing of Celery's.

    Without a receiver Celery gives its task logger (`celery.task`) a handler and format of its
    own that do not propagate, and the pool's (billiard's) logger another one. Billiard's logger
    propagates nothing by default: it goes to LOGGING's handler here, at ERROR as Celery has it
    (a pool process that exited, with its signal or exit code).
    """
    pool_logger = get_multiprocessing_logger()
    if pool_logger is not None:
        pool_logger.propagate = True
        pool_logger.setLevel(logging.ERROR)


def celery_banner_as_log_line(sender: str, instance: Any, **kwargs: Any) -> None:
    """Receiver of Celery's celeryd_after_setup: with JSON logs, the start-up banner is one log line.

    Celery prints it to stdout, around every formatter; in text mode (`make run`) it stays.
    """
    from django.conf import settings

    if settings.LOG_FORMAT != "json" or instance.quiet:
        return
    instance.quiet = True
    logging.getLogger("celery.apps.worker").info(
        "%s starting: %s%s", sender, instance.startup_info(artlines=False), instance.extra_info() or ""
    )
