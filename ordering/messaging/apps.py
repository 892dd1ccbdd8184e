"""App config for the messaging plumbing."""

from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "ordering.messaging"
    label = "messaging"
    verbose_name = "Messaging"
