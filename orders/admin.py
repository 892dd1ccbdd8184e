"""Order admin: search and filter orders (dead-lettered, stuck), read one with its whole history, replay
its dead letters, request cancellations; nothing is editable (orders change only through services).

A cancellation, from an order's page or as an action on the list, needs the `orders.cancel_order`
permission (without it neither button nor action is offered, and the view answers 403). It is a
POST with a CSRF token, after a confirmation page, and calls the service the API calls
(`order_request_cancel`), as `admin:<user id>`; each request that moved an order to CANCELING is
recorded in Django's admin log (LogEntry) in the same transaction as the order's change.
"""

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from ordering.messaging.admin import REPLAY_PERMISSION, replay_and_report
from ordering.messaging.replay import ReplayCriteria
from ordering.messaging.selectors import HistoryEntry, dead_letter_unresolved_exists, event_history
from orders.models import CANCELABLE_STATUSES, Order, OrderStatus
from orders.selectors import STUCK_STATUSES, order_event_summary, order_list_stuck, order_list_stuck_classified
from orders.services import OrderNotCancelable, order_request_cancel

CANCEL_PERMISSION = "orders.cancel_order"
CANCEL_CONFIRM_TEMPLATE = "admin/orders/order/cancel_confirmation.html"


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
    actions = ["cancel_selected"]
    fieldsets = [
        (None, {"fields": ["id", "status", "status_reason", "pipeline", "owner", "correlation_id"]}),
        ("Order", {"fields": ["product_name", "quantity", "price", "currency", "buyer"]}),
        (
            "Outcome",
            {
                "fields": [
                    "fraud_decision", "fraud_score", "fraud_reasons", "payment_reference", "cancel_requested_at",
                    "refund_reference",
                ]
            },
        ),
        ("History", {"fields": ["created_at", "updated_at", "history"]}),
    ]  # fmt: skip

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

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CANCEL_PERMISSION)

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
        waiting = timezone.now() - obj.waiting_since
        if waiting <= stuck_after():
            return f"on its way ({obj.status} for {waiting.total_seconds():.0f} s)"
        classified = order_list_stuck_classified(older_than=stuck_after(), order_ids=[str(obj.pk)])
        if not classified:  # it moved on meanwhile
            return "on its way"
        stuck = classified[0]
        return f"stuck for {waiting.total_seconds() / 60:.0f} min, {stuck.state}: {stuck.detail}"

    @admin.display(description="event history")
    def history(self, obj: Order) -> str:
        # Each event says what it means too (who asked for a cancellation, the refund's reference).
        entries = event_history(order_id=str(obj.id), describe=order_event_summary)
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

    # -- object tools: replay this order's dead letters, cancel this order

    def get_urls(self) -> list:
        replay = self.admin_site.admin_view(self.replay_dead_letters_view)
        cancel = self.admin_site.admin_view(self.cancel_view)
        return [
            path("<path:object_id>/replay-dead-letters/", replay, name="orders_order_replay_dead_letters"),
            path("<path:object_id>/cancel/", cancel, name="orders_order_cancel"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        context = {
            "can_replay_dead_letters": request.user.has_perm(REPLAY_PERMISSION),
            "can_cancel": self.has_cancel_permission(request),
            "cancelable_statuses": sorted(CANCELABLE_STATUSES),
            **(extra_context or {}),
        }
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

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST from the order's page: the confirmation page; POST from that page (confirm): the cancellation."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not (self.has_view_permission(request) and self.has_cancel_permission(request)):
            raise PermissionDenied
        order = get_object_or_404(Order.objects.select_related("owner"), pk=object_id)
        if "confirm" not in request.POST:
            return self._confirm_cancel(request, [order], action=None)
        self._cancel_and_report(request, [order])
        return HttpResponseRedirect(reverse("admin:orders_order_change", args=[order.pk]))

    @admin.action(description="Request the cancellation of the selected orders", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        orders = list(queryset.select_related("owner").order_by("created_at"))
        if "confirm" not in request.POST:
            return self._confirm_cancel(request, orders, action="cancel_selected")
        self._cancel_and_report(request, orders)
        return None

    def _confirm_cancel(self, request: HttpRequest, orders: list[Order], *, action: str | None) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Request the cancellation" + (" of this order" if len(orders) == 1 else " of these orders"),
            "orders": [(order, _what_a_cancellation_does(order)) for order in orders],
            "cancelable": sum(order.status in CANCELABLE_STATUSES for order in orders),
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, CANCEL_CONFIRM_TEMPLATE, context)

    def _cancel_and_report(self, request: HttpRequest, orders: list[Order]) -> None:
        """Request each order's cancellation as `request.user`, audit each one that moved, and say what happened."""
        requested_by = f"admin:{request.user.pk}"
        moved = 0
        for order in orders:
            try:
                # One transaction per order: its change, its event and its audit row commit together,
                # and one order that is over refuses alone.
                with transaction.atomic():
                    was = order.status
                    canceled = order_request_cancel(order_id=order.pk, requested_by=requested_by)
                    # The service leaves an order already CANCELING as it is: nothing to audit then. (As
                    # read before the request: two operators at the same moment are both recorded.)
                    if was != OrderStatus.CANCELING:
                        self.log_change(request, canceled, f"Requested the cancellation of the order (was {was}).")
                        moved += 1
            except OrderNotCancelable as exc:
                messages.error(
                    request, f"Order {order.pk} is {exc.order.status} and can no longer be canceled: nothing changed."
                )
                continue
            if was == OrderStatus.CANCELING:
                messages.info(request, f"Order {order.pk} is being canceled already.")
        if moved:
            messages.success(
                request,
                f"Requested the cancellation of {moved} order{'s' * (moved != 1)}: billing voids a payment not yet "
                "charged and refunds a captured one.",
            )


def _what_a_cancellation_does(order: Order) -> str:
    """For the confirmation page: what a cancellation would do to `order` as it is now."""
    if order.status == OrderStatus.PENDING:
        return "not charged yet: billing voids its payment (or refunds it, if the charge is in flight)"
    if order.status == OrderStatus.PROCESSED:
        return f"charged ({order.payment_reference}): billing refunds {order.amount} {order.currency} in full"
    if order.status == OrderStatus.CANCELING:
        return "being canceled already: nothing more to do"
    return f"{order.get_status_display()}: can no longer be canceled"
