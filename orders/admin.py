"""Order admin: search and filter orders, read one with its whole history; status is not editable."""

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from ordering.messaging.selectors import event_history
from orders.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "product_name", "quantity", "price", "currency", "buyer", "owner", "status", "created_at"]
    list_filter = ["status", "created_at", "currency"]
    search_fields = ["=id", "buyer", "product_name", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    fieldsets = [
        (None, {"fields": ["id", "status", "status_reason", "owner", "correlation_id"]}),
        ("Order", {"fields": ["product_name", "quantity", "price", "currency", "buyer"]}),
        ("Outcome", {"fields": ["fraud_decision", "fraud_score", "fraud_reasons", "payment_reference"]}),
        ("History", {"fields": ["created_at", "updated_at", "history"]}),
    ]

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        # Every field: orders change only through services, which keep status and events in step.
        return [field for fieldset in self.fieldsets for field in fieldset[1]["fields"]]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="event history")
    def history(self, obj: Order) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (f"{entry.at:%Y-%m-%d %H:%M:%S.%f}"[:-3], entry.what, entry.detail)
                for entry in event_history(order_id=str(obj.id))
            ),
        )
        return format_html("<table><tr><th>time</th><th>what</th><th>detail</th></tr>{}</table>", rows)
