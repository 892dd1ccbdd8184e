"""Idempotency keys in PostgreSQL: claim a key, record its response, read it back, purge expired ones.

What holds, and why:
- One execution per (client, key): the key's row is unique on (user, key) and is claimed in the
  transaction that runs the request and records its response. They commit together or not at all:
  never an order without its key or a key without its response, and a request that dies half-way
  leaves nothing behind (its transaction rolls back, its locks go with its connection).
- A key in flight is refused at once: the claiming transaction holds a transaction-level advisory
  lock on the key, and a second claim that cannot take it answers "in flight" (409) instead of
  waiting on the unique index until the first one commits. (Not a short lock_timeout around the
  insert: it would also cut every later lock wait of the request's transaction, the NOTIFY queue's
  lock at commit among them, and a 409 would depend on timing.)
- A replay reads the committed row and takes no lock, so concurrent retries of a finished request
  all get its response.
- An expired key is free again: the claim takes over its row (ON CONFLICT ... WHERE expired), so
  expiry holds without waiting for `purge_idempotency_keys`, which deletes expired rows in bulk.
"""

import enum
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models.functions import Now

from ordering.idempotency.models import IdempotencyKey


class Claim(enum.Enum):
    CLAIMED = "claimed"  # this transaction owns the key: run the request, record its response
    IN_FLIGHT = "in flight"  # another transaction owns it and has not committed
    TAKEN = "taken"  # a committed, unexpired response exists: replay it


@dataclass(frozen=True)
class StoredResponse:
    fingerprint: str
    status_code: int
    body: Any
    location: str


_TABLE = IdempotencyKey._meta.db_table

# The advisory lock's id is a hash of user and key (the fraud app locks buyers the same way, under
# its own prefix); a collision can only make a request 409 while another key is in flight.
_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtextextended('idempotency:' || %s || ':' || %s, 0))"

_CLAIM_SQL = f"""
    INSERT INTO {_TABLE} (user_id, key, fingerprint, status_code, body, location, created_at, expires_at)
    VALUES (%s, %s, %s, NULL, NULL, '', now(), now() + make_interval(secs => %s))
    ON CONFLICT (user_id, key) DO UPDATE SET
        fingerprint = EXCLUDED.fingerprint, status_code = NULL, body = NULL, location = '',
        created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
    WHERE {_TABLE}.expires_at <= now()
    RETURNING id
"""


def idempotency_key_claim(*, user_id: int, key: str, fingerprint: str, ttl_seconds: float) -> Claim:
    """Claim the key for the current transaction, which must also run the request and record its response."""
    if not connection.in_atomic_block:
        raise RuntimeError("an idempotency key is claimed in the transaction of the request it answers")
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL, [str(user_id), key])
        if not cursor.fetchone()[0]:
            return Claim.IN_FLIGHT
        # Holding the lock, nothing uncommitted can be in the index for this key: the insert never waits.
        cursor.execute(_CLAIM_SQL, [user_id, key, fingerprint, ttl_seconds])
        return Claim.CLAIMED if cursor.fetchone() is not None else Claim.TAKEN


def idempotency_key_record(*, user_id: int, key: str, status_code: int, body: Any, location: str) -> None:
    """Store the response of the request that claimed the key, in the transaction that claimed it."""
    IdempotencyKey.objects.filter(user_id=user_id, key=key).update(
        status_code=status_code, body=body, location=location
    )


def idempotency_key_stored(*, user_id: int, key: str) -> StoredResponse | None:
    """The committed, unexpired response to the client's key, if there is one.

    Expiry by the database's clock (as the claim's), so web processes with skewed clocks agree.
    """
    row = (
        IdempotencyKey.objects.filter(user_id=user_id, key=key, expires_at__gt=Now(), status_code__isnull=False)
        .values_list("fingerprint", "status_code", "body", "location")
        .first()
    )
    return StoredResponse(*row) if row is not None else None


def idempotency_keys_purge(*, batch_size: int = 10_000) -> int:
    """Delete expired keys, a batch per transaction (short locks); returns how many."""
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {_TABLE} WHERE id IN "
                f"(SELECT id FROM {_TABLE} WHERE expires_at <= now() LIMIT %s FOR UPDATE SKIP LOCKED)",
                [batch_size],
            )
            count = cursor.rowcount
        deleted += count
        if count < batch_size:
            return deleted
