from django.db import migrations

# Every statement that inserts outbox rows NOTIFYs the relay's channel (ordering_outbox), delivered
# at commit. Done by the database, so no writer can forget it and none pays a round trip for it.
CREATE = """
CREATE FUNCTION messaging_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ordering_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER messaging_outbox_notify AFTER INSERT ON messaging_outboxevent
    FOR EACH STATEMENT EXECUTE FUNCTION messaging_outbox_notify();
"""

DROP = """
DROP TRIGGER messaging_outbox_notify ON messaging_outboxevent;
DROP FUNCTION messaging_outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("messaging", "0002_outbox_drop_last_error")]

    operations = [migrations.RunSQL(CREATE, DROP)]
