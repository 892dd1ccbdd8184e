"""WSGI entry point for gunicorn."""

import os

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordering.settings")

application = get_wsgi_application()

# Refuse to serve without a key: Django would only fail on the first request that needs it (a
# session, a CSRF token), and answer 500 from then on.
try:
    settings.SECRET_KEY  # noqa: B018 (Django refuses an empty key on access)
except ImproperlyConfigured as exc:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set and DEBUG is off: set SECRET_KEY to a long random value "
        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'), or DEBUG=true for development."
    ) from exc
