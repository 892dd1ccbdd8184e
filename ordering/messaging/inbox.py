"""The inbox: which consumer has handled which event, so a redelivery has no second effect."""

from django.db import connection

from ordering.messaging.envelope import Envelope
from ordering.messaging.models import ProcessedEvent


def inbox_record(*, consumer: str, envelope: Envelope) -> bool:
    """Record that `consumer` handled the event; False if it already had (a duplicate).

    Call it inside the transaction of the consumer's effect, so both commit or neither does.
    Concurrent duplicates serialise on the unique index: the second waits for the first to
    commit, then inserts nothing and gets False.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("inbox_record must run inside the transaction of the consumer's effect")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {ProcessedEvent._meta.db_table} "
            "(consumer, event_id, event_type, aggregate_id, processed_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (consumer, event_id) DO NOTHING",
            [consumer, envelope.event_id, envelope.event_type, envelope.aggregate_id],
        )
        return cursor.rowcount == 1


def inbox_has(*, consumer: str, event_id: object) -> bool:
    """Whether `consumer` has handled the event (a cheap pre-check before any side effect)."""
    return ProcessedEvent.objects.filter(consumer=consumer, event_id=event_id).exists()
