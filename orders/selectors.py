"""Order reads: what an API client may see."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from orders.models import Order


def order_list_visible_to(*, user: AbstractBaseUser) -> QuerySet[Order]:
    """A client sees only its own orders; staff see all."""
    orders = Order.objects.select_related("owner")
    return orders if user.is_staff else orders.filter(owner=user)
