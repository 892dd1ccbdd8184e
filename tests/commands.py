"""Management commands run as an operator runs them, for their output."""

import io

from django.core.management import call_command


def command_output(name: str, *args: str) -> str:
    """What `manage.py <name> <args>` writes to stdout."""
    out = io.StringIO()
    call_command(name, *args, stdout=out)
    return out.getvalue()
