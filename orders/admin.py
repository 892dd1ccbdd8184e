"""Order admin: search and filter orders (dead-lettered, stuck), read one with its whole history, replay
its dead letters; nothing is editable (orders change only through services)."""

from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from ordering.messaging.admin import REPLAY_PERMISSION, replay_and_report
from ordering.messaging.replay import ReplayCriteria
from ordering.messaging.selectors import HistoryEntry, dead_letter_unresolved_exists, event_history
from orders.models import Order, OrderStatus
from orders.selectors import STUCK_STATUSES, order_list_stuck, order_list_stuck_classified


def stuck_after() -> timedelta:
    """PENDING (or CANCELING) longer than this is stuck: the watchdog's threshold, check_pipeline's and the metric's."""
    return timedelta(seconds=settings.WATCHDOG["STUCK_AFTER_SECONDS"])


class ProblemFilter(admin.SimpleListFilter):
    title = "needs an operator"
    parameter_name = "problem"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [
            ("dead_lettered", "Dead-lettered (unresolved dead letter)"),
            ("stuck", f"Stuck (PENDING or CANCELING over {stuck_after().total_seconds() / 60:g} min)"),
        ]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() == "dead_lettered":
            return queryset.filter(dead_lettered=True)
        if self.value() == "stuck":
            return queryset.filter(stuck=True)
        return queryset


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    change_form_template = "admin/orders/order/change_form.html"
    list_display = [
        "id", "product_name", "quantity", "price", "currency", "buyer", "owner", "status", "is_dead_lettered",
        "is_stuck", "created_at",
    ]  # fmt: skip
    list_filter = [ProblemFilter, "status", "created_at", "currency"]
    search_fields = ["=id", "buyer", "product_name", "owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    fieldsets = [
        (None, {"fields": ["id", "status", "status_reason", "pipeline", "owner", "correlation_id"]}),
        ("Order", {"fields": ["product_name", "quantity", "price", "currency", "buyer"]}),
        ("Outcome", {"fields": ["fraud_decision", "fraud_score", "fraud_reasons", "payment_reference"]}),
        ("History", {"fields": ["created_at", "updated_at", "history"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                dead_lettered=dead_letter_unresolved_exists(order_id=OuterRef("pk")),
                stuck=Exists(order_list_stuck(older_than=stuck_after()).filter(pk=OuterRef("pk"))),
            )
        )

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        # Every field: orders change only through services, which keep status and events in step.
        return [field for fieldset in self.fieldsets for field in fieldset[1]["fields"]]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Nothing here is editable: Django renders the view-only page, without Save buttons.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="dead-lettered", boolean=True, ordering="dead_lettered")
    def is_dead_lettered(self, obj: Order) -> bool:
        return obj.dead_lettered

    @admin.display(description="stuck", boolean=True, ordering="stuck")
    def is_stuck(self, obj: Order) -> bool:
        return obj.stuck

    @admin.display(description="where it is")
    def pipeline(self, obj: Order) -> str:
        """The watchdog's view of a stuck order: in flight, dead-lettered or missing, and why."""
        if obj.status not in STUCK_STATUSES:
            return "done"
        since = obj.cancel_requested_at if obj.status == OrderStatus.CANCELING else obj.created_at
        waiting = timezone.now() - since
        if waiting <= stuck_after():
            return f"on its way ({obj.status} for {waiting.total_seconds():.0f} s)"
        classified = order_list_stuck_classified(older_than=stuck_after(), order_ids=[str(obj.pk)])
        if not classified:  # it moved on meanwhile
            return "on its way"
        stuck = classified[0]
        return f"stuck for {waiting.total_seconds() / 60:.0f} min, {stuck.state}: {stuck.detail}"

    @admin.display(description="event history")
    def history(self, obj: Order) -> str:
        entries = event_history(order_id=str(obj.id))
        if obj.is_terminal:
            # The status change itself: the last write of the order (its outcome event is consumed above).
            entries = sorted(
                [*entries, HistoryEntry(obj.updated_at, f"status {obj.status}", obj.status_reason)], key=lambda e: e.at
            )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            (
                (f"{entry.at:%Y-%m-%d %H:%M:%S.%f}"[:-3], entry.what, entry.detail, entry.correlation_id)
                for entry in entries
            ),
        )
        return format_html(
            "<table><tr><th>time</th><th>what</th><th>detail</th><th>correlation id</th></tr>{}</table>", rows
        )

    # -- replay this order's dead letters (object tool)

    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.replay_dead_letters_view)
        return [
            path("<path:object_id>/replay-dead-letters/", view, name="orders_order_replay_dead_letters"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        context = {"can_replay_dead_letters": request.user.has_perm(REPLAY_PERMISSION), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=context)

    def replay_dead_letters_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not (self.has_view_permission(request) and request.user.has_perm(REPLAY_PERMISSION)):
            raise PermissionDenied
        order = get_object_or_404(Order, pk=object_id)
        criteria = ReplayCriteria(order_id=str(order.id), reset_retries=True)
        replay_and_report(request, criteria=criteria, reason=request.POST.get("reason", ""))
        return HttpResponseRedirect(reverse("admin:orders_order_change", args=[order.pk]))
