"""The orders REST API: create, list (paginated, filterable by status) and read orders."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from orders.selectors import order_list_visible_to
from orders.serializers import OrderCreateSerializer, OrderSerializer
from orders.services import order_create


class OrderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = OrderSerializer
    filterset_fields = ["status"]

    def get_queryset(self):
        return order_list_visible_to(user=self.request.user)

    @extend_schema(request=OrderCreateSerializer, responses={201: OrderSerializer})
    def create(self, request: Request) -> Response:
        incoming = OrderCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        order = order_create(owner=request.user, **incoming.validated_data)
        location = reverse("order-detail", args=[order.id], request=request)
        return Response(OrderSerializer(order).data, status=status.HTTP_201_CREATED, headers={"Location": location})
