"""Create (or reset) a staff user for trying the system, and print its API token."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create or reset a superuser for the admin and print its API token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")
        parser.add_argument(
            "--token-only",
            action="store_true",
            help="print the token alone: TOKEN=$(make -s demo-user ARGS=--token-only)",
        )
        parser.add_argument(
            "--port", default=os.environ.get("PORT", "8000"), help="web's port in the example (default: $PORT or 8000)"
        )

    def handle(self, *args, **options) -> None:
        user, _ = get_user_model().objects.get_or_create(username=options["username"])
        user.is_staff = user.is_superuser = True
        user.set_password(options["password"])
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        if options["token_only"]:
            self.stdout.write(token.key)
            return
        base = f"http://127.0.0.1:{options['port']}"
        self.stdout.write(f"user: {user.username}  password: {options['password']}  (admin: {base}/admin/)")
        self.stdout.write(f"export TOKEN={token.key}")
        self.stdout.write(f'try:  curl -H "Authorization: Token $TOKEN" {base}/api/orders/')
