"""The outbox hook: a payment's staged events are written in the transaction that saves it."""

from django.db.models.signals import post_save

from billing.models import Payment
from ordering.messaging.outbox import write_staged_events

post_save.connect(write_staged_events, sender=Payment, dispatch_uid="billing.payment.outbox")
