"""API idempotency keys: the Idempotency-Key header of POST requests, stored in PostgreSQL."""
