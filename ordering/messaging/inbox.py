"""The inbox: which consumer has handled which event, so a redelivery has no second effect.

One row per (consumer, event id), written in the transaction of the consumer's effect: both
commit or neither does. The unique index is the whole mechanism, with no check before the write:
a duplicate's insert does nothing, and a concurrent duplicate waits on the index until the first
commits (then inserts nothing) or rolls back (then inserts and goes on).
"""

import logging

from django.db import connection

from ordering.messaging.envelope import Envelope
from ordering.messaging.models import ProcessedEvent

logger = logging.getLogger(__name__)

_CLAIM_SQL = (
    f"INSERT INTO {ProcessedEvent._meta.db_table} (consumer, event_id, event_type, aggregate_id, processed_at) "
    "SELECT %s::varchar, e.event_id, e.event_type, e.aggregate_id, now() "
    "FROM unnest(%s::uuid[], %s::varchar[], %s::varchar[]) AS e(event_id, event_type, aggregate_id) "
    "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
)


def inbox_claim(*, consumer: str, envelopes: list[Envelope]) -> list[Envelope]:
    """Record that `consumer` handles these events; returns those it had not handled (in order).

    Call it inside the transaction of the consumer's effect. One statement for any number.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("inbox_claim must run inside the transaction of the consumer's effect")
    if not envelopes:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_SQL,
            [
                consumer,
                [e.event_id for e in envelopes],
                [e.event_type for e in envelopes],
                [e.aggregate_id for e in envelopes],
            ],
        )
        claimed = {row[0] for row in cursor.fetchall()}
    fresh, seen = [], set()
    for envelope in envelopes:
        # The same event twice in one batch (two copies delivered together) counts once.
        if envelope.event_id in claimed and envelope.event_id not in seen:
            fresh.append(envelope)
            seen.add(envelope.event_id)
        else:
            logger.info("%s: duplicate %s ignored", consumer, envelope.event_id)
    return fresh
