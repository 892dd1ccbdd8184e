"""The outbox hook: a fraud check's staged events are written in the transaction that saves it."""

from django.db.models.signals import post_save

from fraud.models import FraudCheck
from ordering.messaging.outbox import write_staged_events

post_save.connect(write_staged_events, sender=FraudCheck, dispatch_uid="fraud.check.outbox")
