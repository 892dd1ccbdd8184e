"""`make demo-user`: what a first-time user copies from it must work as printed."""

import pytest
from rest_framework.authtoken.models import Token

from tests.commands import command_output

pytestmark = pytest.mark.django_db


def demo_user(*args: str) -> str:
    return command_output("create_demo_user", *args)


def test_the_example_uses_the_port_web_runs_on(monkeypatch):
    monkeypatch.setenv("PORT", "8400")
    printed = demo_user()
    key = Token.objects.get(user__username="demo").key
    assert f"export TOKEN={key}\n" in printed
    assert "http://127.0.0.1:8400/api/orders/" in printed
    assert ":8000" not in printed


def test_token_only_prints_the_token_alone():
    assert demo_user("--token-only") == Token.objects.get(user__username="demo").key + "\n"
