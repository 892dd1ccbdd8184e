"""Billing admin: payments and the simulated gateway's ledger read-only; outages can be scheduled."""

from django.contrib import admin

from billing.models import Payment, SimulatedCharge, SimulatedGatewayOutage, SimulatedRefund
from ordering.messaging.admin import ReadOnlyAdmin


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "order_id",
        "amount",
        "currency",
        "buyer",
        "status",
        "gateway_reference",
        "created_at",
        "updated_at",
    ]
    list_filter = ["status", "created_at"]
    search_fields = ["=order_id", "buyer", "gateway_reference"]


@admin.register(SimulatedCharge)
class SimulatedChargeAdmin(ReadOnlyAdmin):
    list_display = ["reference", "idempotency_key", "amount", "currency", "succeeded", "created_at"]
    list_filter = ["succeeded"]
    search_fields = ["idempotency_key", "reference"]


@admin.register(SimulatedRefund)
class SimulatedRefundAdmin(ReadOnlyAdmin):
    list_display = ["reference", "idempotency_key", "charge", "amount", "currency", "succeeded", "created_at"]
    list_filter = ["succeeded"]
    search_fields = ["idempotency_key", "reference", "charge__reference"]
    list_select_related = ["charge"]


@admin.register(SimulatedGatewayOutage)
class SimulatedGatewayOutageAdmin(admin.ModelAdmin):
    list_display = ["operation", "until", "note", "created_at"]
    list_filter = ["operation"]
