"""Admin for operators: the outbox, the inbox, the dead letters, and fixing them (replay, discard).

Replay and discard run the same services as `manage.py replay_dead_letters` (ordering/messaging/
replay.py): confirm, then ack; every use is recorded (DeadLetterAction). They need the custom
permissions `messaging.replay_deadletter` / `messaging.discard_deadletter`; without them the
actions and buttons are not offered and the views refuse (403). Every change is a POST with a
CSRF token, after an intermediate confirmation page.
"""

import json
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from ordering import catalogue
from ordering.messaging import selectors
from ordering.messaging.models import DeadLetter, DeadLetterAction, DeadLetterOutcome, OutboxEvent, ProcessedEvent
from ordering.messaging.replay import ReplayCriteria, ReplaySummary, dead_letters_discard, dead_letters_replay

REPLAY_PERMISSION = "messaging.replay_deadletter"
DISCARD_PERMISSION = "messaging.discard_deadletter"
CONFIRM_TEMPLATE = "admin/messaging/deadletter/confirm_action.html"


class ReadOnlyAdmin(admin.ModelAdmin):
    """These tables are written by the system only; operators look, they do not edit."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "event_type", "version", "aggregate_id", "occurred_at", "published_at", "publish_attempts"]
    list_filter = ["event_type", ("published_at", admin.EmptyFieldListFilter)]
    search_fields = ["=id", "=aggregate_id", "correlation_id"]
    date_hierarchy = "occurred_at"


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "consumer", "event_type", "aggregate_id", "processed_at"]
    list_filter = ["consumer", "event_type"]
    search_fields = ["=event_id", "=aggregate_id"]


# --- Dead letters: filters ----------------------------------------------------------------------


class ResolvedFilter(admin.SimpleListFilter):
    title = "resolved"
    parameter_name = "resolved"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [("no", "Unresolved"), ("yes", "Resolved (handled since, or discarded)")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(resolved=self.value() == "yes")
        return queryset


class _ValueFilter(admin.SimpleListFilter):
    """Filter on one annotation of `dead_letters_annotated`, offering the values present."""

    field: str

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        values = (
            selectors.dead_letters_annotated()
            .exclude(**{f"{self.field}__isnull": True})
            .values_list(self.field, flat=True)
            .distinct()
            .order_by(self.field)
        )
        return [(value, value) for value in values]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class QueueFilter(_ValueFilter):
    title = "consumer queue"
    parameter_name = "queue"
    field = "queue_name"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [(queue, queue) for queue in catalogue.CONSUMER_QUEUES]


class ExceptionTypeFilter(_ValueFilter):
    title = "exception type"
    parameter_name = "exception"
    field = "exception_type"


class EventTypeFilter(_ValueFilter):
    title = "event type"
    parameter_name = "event_type"
    field = "event_type"


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    AGES = {
        "1h": ("Under an hour", timedelta(0), timedelta(hours=1)),
        "1d": ("1 to 24 hours", timedelta(hours=1), timedelta(days=1)),
        "7d": ("1 to 7 days", timedelta(days=1), timedelta(days=7)),
        "old": ("Older than 7 days", timedelta(days=7), None),
    }

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _, _) in self.AGES.items()]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() not in self.AGES:
            return queryset
        _, younger, older = self.AGES[self.value()]
        now = timezone.now()
        queryset = queryset.filter(date_done__lte=now - younger)
        return queryset.filter(date_done__gt=now - older) if older else queryset


# --- Dead letters: forms and the operation behind every button ----------------------------------


class ReplayForm(forms.Form):
    reason = forms.CharField(required=False, max_length=1000, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
    reset_retries = forms.BooleanField(required=False, initial=True, label="Give each task its full retry budget back")
    force = forms.BooleanField(
        required=False,
        label=f"Also replay letters replayed {settings.MESSAGING['REPLAY_MAX_REPLAYS']} times or more already",
    )


class DiscardForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Required: why these messages are not to be processed. Kept in the audit record.",
    )


def replay_and_report(request: HttpRequest, *, criteria: ReplayCriteria, reason: str = "") -> ReplaySummary | None:
    """Replay as `request.user` (audited) and tell the operator the outcome with `messages`."""
    return _run_and_report(request, kind=DeadLetterAction.Kind.REPLAY, criteria=criteria, reason=reason)


def _run_and_report(request: HttpRequest, *, kind: str, criteria: ReplayCriteria, reason: str) -> ReplaySummary | None:
    operation = dead_letters_replay if kind == DeadLetterAction.Kind.REPLAY else dead_letters_discard
    try:
        summary, _ = operation(criteria=criteria, actor=request.user.get_username(), user=request.user, reason=reason)
    except Exception as exc:  # the broker unreachable or refusing: recorded, and said so
        messages.error(request, f"The {kind} did not complete ({type(exc).__name__}: {exc}); it is in the audit.")
        return None
    done = summary.replayed if kind == DeadLetterAction.Kind.REPLAY else summary.discarded
    verb = "Replayed" if kind == DeadLetterAction.Kind.REPLAY else "Discarded"
    if done:
        messages.success(request, f"{verb} {len(done)} dead letter{'s' * (len(done) != 1)}.")
    for letter, why in summary.skipped:
        messages.warning(request, f"Skipped the dead letter of order {letter.order_id or '?'}: {why}.")
    for letter, why in summary.failed:
        messages.error(request, f"Could not replay the dead letter of order {letter.order_id or '?'}: {why}.")
    if criteria.task_ids is not None:
        taken = {letter.task_id for letter in (*done, *(letter for letter, _ in (*summary.skipped, *summary.failed)))}
        missing = len(criteria.task_ids - taken)
        if missing:
            messages.info(
                request,
                f"{missing} of the chosen dead letters {'is' if missing == 1 else 'are'} no longer in a DLQ "
                "(replayed or discarded before).",
            )
    elif not done and not summary.skipped and not summary.failed:
        messages.info(request, "No dead letter of this kind is waiting in a DLQ.")
    return summary


def _criteria_for(letters: QuerySet, *, reset_retries: bool = False, force: bool = False) -> ReplayCriteria:
    """The dead letters `letters` (rows) as replay criteria: their task ids, in their queues' DLQs."""
    rows = list(letters.values_list("task_id", "queue_name"))
    named = {queue for _, queue in rows}
    queues = tuple(queue for queue in catalogue.CONSUMER_QUEUES if queue in named) or catalogue.CONSUMER_QUEUES
    return ReplayCriteria(
        queues=queues,
        task_ids=frozenset(task_id for task_id, _ in rows),
        reset_retries=reset_retries,
        force=force,
    )


# --- Dead letters -------------------------------------------------------------------------------


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Failures that sent a message to a dead-letter queue: find them by group, replay or discard them."""

    change_list_template = "admin/messaging/deadletter/change_list.html"
    list_display = [
        "failed_at", "task_name", "event_type_name", "order_link", "failure", "attempts", "queue", "is_resolved",
    ]  # fmt: skip
    list_filter = [ResolvedFilter, QueueFilter, ExceptionTypeFilter, EventTypeFilter, AgeFilter]
    search_fields = ["task_id", "task_kwargs", "meta"]
    actions = ["replay_selected", "discard_selected"]
    fields = [
        "order_link",
        "event_type_name",
        "failure",
        "is_resolved",
        "queue",
        "attempts",
        "failed_at",
        "task_name",
        "task_id",
        "worker",
        "traceback_text",
        "envelope",
    ]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return selectors.dead_letters_annotated().order_by("-date_done")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERMISSION)

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DISCARD_PERMISSION)

    # -- columns and fields

    @admin.display(description="failed at", ordering="date_done")
    def failed_at(self, obj: DeadLetter) -> object:
        return obj.date_done

    @admin.display(description="event type", ordering="event_type")
    def event_type_name(self, obj: DeadLetter) -> str:
        return obj.event_type or ""

    @admin.display(description="order", ordering="order_id")
    def order_link(self, obj: DeadLetter) -> str:
        return order_link(obj.order_id)

    @admin.display(description="failure", ordering="exception_type")
    def failure(self, obj: DeadLetter) -> str:
        return selectors.failure_summary(obj)

    @admin.display(description="attempts")
    def attempts(self, obj: DeadLetter) -> int | None:
        return selectors.failure_attempts(obj)

    @admin.display(description="original queue", ordering="queue_name")
    def queue(self, obj: DeadLetter) -> str:
        return obj.queue_name or ""

    @admin.display(description="resolved", boolean=True, ordering="resolved")
    def is_resolved(self, obj: DeadLetter) -> bool:
        return obj.resolved

    @admin.display(description="traceback")
    def traceback_text(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", obj.traceback or "")

    @admin.display(description="payload (envelope)")
    def envelope(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(selectors.dead_letter_envelope(obj) or {}, indent=2))

    # -- the list: groups above it

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        changelist_url = reverse("admin:messaging_deadletter_changelist")
        groups = []
        for group in selectors.dead_letter_groups():
            query = {"resolved": "no", "queue": group["queue_name"] or "", "exception": group["exception_type"] or ""}
            groups.append(
                {
                    **group,
                    "list_url": f"{changelist_url}?{urlencode({k: v for k, v in query.items() if v})}",
                    "replay_url": f"{reverse('admin:messaging_deadletter_replay_group')}?{urlencode(query)}",
                    "age": timezone.now() - group["oldest"] if group["oldest"] else None,
                }
            )
        context = {
            "dead_letter_groups": groups,
            "can_replay": self.has_replay_permission(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.replay_group_view)
        return [path("replay-group/", view, name="messaging_deadletter_replay_group"), *super().get_urls()]

    # -- actions

    @admin.action(description="Replay the selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = ReplayForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            criteria = _criteria_for(
                queryset, reset_retries=form.cleaned_data["reset_retries"], force=form.cleaned_data["force"]
            )
            replay_and_report(request, criteria=criteria, reason=form.cleaned_data["reason"])
            return None
        return self._confirm(request, queryset, form, action="replay_selected", verb="Replay")

    @admin.action(description="Discard the selected dead letters (with a reason)", permissions=["discard"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = DiscardForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            _run_and_report(
                request,
                kind=DeadLetterAction.Kind.DISCARD,
                criteria=_criteria_for(queryset),
                reason=form.cleaned_data["reason"],
            )
            return None
        return self._confirm(request, queryset, form, action="discard_selected", verb="Discard")

    def replay_group_view(self, request: HttpRequest) -> HttpResponse:
        """All unresolved dead letters of one queue and exception type: confirm (GET), replay (POST)."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        params = request.POST if request.method == "POST" else request.GET
        queue, exception_type = params.get("queue") or None, params.get("exception") or None
        letters = selectors.dead_letters_in_group(queue=queue, exception_type=exception_type)
        form = ReplayForm(request.POST if request.method == "POST" else None)
        if form.is_bound and form.is_valid():
            criteria = _criteria_for(
                letters, reset_retries=form.cleaned_data["reset_retries"], force=form.cleaned_data["force"]
            )
            replay_and_report(request, criteria=criteria, reason=form.cleaned_data["reason"])
            return HttpResponseRedirect(reverse("admin:messaging_deadletter_changelist"))
        group = f"{queue or 'unknown queue'}, {exception_type or 'unknown exception'}"
        return self._confirm(request, letters, form, action=None, verb="Replay", group=group)

    def _confirm(
        self,
        request: HttpRequest,
        letters: QuerySet,
        form: forms.Form,
        *,
        action: str | None,
        verb: str,
        group: str = "",
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{verb} dead letters" + (f": {group}" if group else ""),
            "letters": letters,
            "form": form,
            "action": action,
            "verb": verb,
            "group": group,
            "params": {"queue": request.GET.get("queue", ""), "exception": request.GET.get("exception", "")},
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, CONFIRM_TEMPLATE, context)


def order_link(order_id: str | None) -> str:
    """The order's admin page, by URL name (this app knows no order model)."""
    if not order_id:
        return ""
    try:
        return format_html('<a href="{}">{}</a>', reverse("admin:orders_order_change", args=[order_id]), order_id)
    except NoReverseMatch:
        return order_id


# --- Audit --------------------------------------------------------------------------------------


class DeadLetterOutcomeInline(admin.TabularInline):
    model = DeadLetterOutcome
    fields = ["result", "order", "queue", "event_type", "task_id", "detail"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="order")
    def order(self, obj: DeadLetterOutcome) -> str:
        return order_link(obj.order_id)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DeadLetterAction)
class DeadLetterActionAdmin(ReadOnlyAdmin):
    """Every replay and discard: who, when, why, and what came of it. Nobody edits the record."""

    list_display = ["at", "actor", "action", "reason", "replayed", "discarded", "skipped", "failed", "error"]
    list_filter = ["action", "actor", "at"]
    search_fields = ["actor", "reason", "outcomes__task_id", "outcomes__order_id"]
    fields = [
        "at", "actor", "user", "action", "reason", "criteria", "replayed", "discarded", "skipped", "failed", "error",
    ]  # fmt: skip
    readonly_fields = fields
    inlines = [DeadLetterOutcomeInline]
