"""Fraud admin: the blocklist is edited here; checks are read-only records."""

from django.contrib import admin

from fraud.models import BlockedBuyer, FraudCheck
from ordering.messaging.admin import ReadOnlyAdmin


@admin.register(BlockedBuyer)
class BlockedBuyerAdmin(admin.ModelAdmin):
    list_display = ["buyer", "reason", "created_at"]
    search_fields = ["buyer"]


@admin.register(FraudCheck)
class FraudCheckAdmin(ReadOnlyAdmin):
    list_display = ["order_id", "buyer", "amount", "currency", "decision", "score", "reasons", "checked_at"]
    list_filter = ["decision", "checked_at"]
    search_fields = ["=order_id", "buyer"]
