"""Buyers in one spelling (trimmed, lower case), as the API now stores them and fraud compares them."""

from django.db import migrations

NORMALIZE_SQL = [
    # Entries that name one buyer in several spellings: the first one listed stays.
    """
    DELETE FROM fraud_blockedbuyer b USING fraud_blockedbuyer o
     WHERE lower(btrim(o.buyer)) = lower(btrim(b.buyer)) AND o.id < b.id
    """,
    "UPDATE fraud_blockedbuyer SET buyer = lower(btrim(buyer)) WHERE buyer <> lower(btrim(buyer))",
    "UPDATE fraud_fraudcheck SET buyer = lower(btrim(buyer)) WHERE buyer <> lower(btrim(buyer))",
]


class Migration(migrations.Migration):
    dependencies = [("fraud", "0001_initial")]

    operations = [migrations.RunSQL(sql, reverse_sql=migrations.RunSQL.noop) for sql in NORMALIZE_SQL]
