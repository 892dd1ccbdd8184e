"""The outbox hook: an order's staged events are written in the transaction that saves it."""

from django.db.models.signals import post_save

from ordering.messaging.outbox import write_staged_events
from orders.models import Order

post_save.connect(write_staged_events, sender=Order, dispatch_uid="orders.order.outbox")
