"""Order reads: what an API client may see."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from orders.models import Order, OrderStatus


def order_list_visible_to(*, user: AbstractBaseUser) -> QuerySet[Order]:
    """A client sees only its own orders; staff see all."""
    orders = Order.objects.select_related("owner")
    return orders if user.is_staff else orders.filter(owner=user)


def order_list_stuck(*, older_than: timedelta) -> QuerySet[Order]:
    """Orders still PENDING after `older_than`: something upstream needs an operator."""
    return Order.objects.filter(status=OrderStatus.PENDING, created_at__lt=timezone.now() - older_than)
