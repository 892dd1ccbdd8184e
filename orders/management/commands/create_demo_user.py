"""Create (or reset) a staff user for trying the system, and print its API token."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create or reset a superuser for the admin and print its API token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo-password")

    def handle(self, *args, **options) -> None:
        user, _ = get_user_model().objects.get_or_create(username=options["username"])
        user.is_staff = user.is_superuser = True
        user.set_password(options["password"])
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"user: {user.username}  password: {options['password']}")
        self.stdout.write(f"token: {token.key}")
        self.stdout.write(f'try:  curl -H "Authorization: Token {token.key}" http://127.0.0.1:8000/api/orders/')
