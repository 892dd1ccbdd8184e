"""Admin choices for third-party models (imported by ordering/urls.py, after the admin autodiscovery).

- API tokens are listed by their first characters only: a token is a password; anyone who can
  read the list could act as every client. A new token is shown once, when it is created.
- django-celery-results' own admin is removed: its task results are the records behind the dead
  letters (Messaging > Dead letters shows them read-only), and its pages let staff edit and
  delete them.
"""

from django.contrib import admin, messages
from django.http import HttpRequest
from django_celery_results.models import GroupResult, TaskResult
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

SHOWN_KEY_CHARACTERS = 4

for model in (TaskResult, GroupResult):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


class MaskedTokenAdmin(TokenAdmin):
    list_display = ("masked_key", "user", "created")

    @admin.display(description="key")
    def masked_key(self, token: Token) -> str:
        return f"{token.key[:SHOWN_KEY_CHARACTERS]}…"

    def save_model(self, request: HttpRequest, obj: Token, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            messages.warning(request, f"The token of {obj.user} is {obj.key}: copy it now, it is not shown again.")


if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)
admin.site.register(TokenProxy, MaskedTokenAdmin)
