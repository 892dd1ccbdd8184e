"""Order reads: what an API client may see."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.utils import timezone

from orders.models import Order, OrderStatus


def order_list_visible_to(*, user: AbstractBaseUser) -> QuerySet[Order]:
    """A client sees only its own orders; a user with the `orders.view_order` permission sees all.

    Being staff is not enough: it opens the admin, not every client's orders and buyers.
    """
    orders = Order.objects.select_related("owner")
    # An anonymous user owns nothing. The API never lets one through, but the OpenAPI schema is
    # generated with one (and `check --deploy` warns when that fails).
    if not user.is_authenticated:
        return orders.none()
    return orders if user.has_perm("orders.view_order") else orders.filter(owner=user)


def order_list_stuck(*, older_than: timedelta) -> QuerySet[Order]:
    """Orders still PENDING after `older_than`: something upstream needs an operator."""
    return Order.objects.filter(status=OrderStatus.PENDING, created_at__lt=timezone.now() - older_than)
