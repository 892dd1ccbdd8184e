"""The orders REST API: create, list (paginated, filterable by status), read and cancel orders."""

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.throttling import BaseThrottle

from ordering.idempotency import decorators as idempotency
from ordering.parsers import JSONParser
from ordering.schema import ErrorSerializer
from ordering.throttling import CreateRateThrottle
from orders.selectors import order_list_cancelable_by, order_list_visible_to
from orders.serializers import OrderCreateSerializer, OrderSerializer
from orders.services import OrderNotCancelable, order_create, order_request_cancel


def _idempotency_parameters(success: int) -> list[OpenApiParameter]:
    """The Idempotency-Key header of a POST, and the headers of its answers."""
    return [
        OpenApiParameter(
            idempotency.HEADER,
            str,
            OpenApiParameter.HEADER,
            description="1-255 printable ASCII characters, per client, kept IDEMPOTENCY_KEY_TTL_SECONDS: "
            "a retry with the same key and body gets the first response again (Idempotent-Replayed: true). "
            "A malformed key is 400 (`code` idempotency_key_invalid).",
            pattern=idempotency.KEY_PATTERN,
        ),
        OpenApiParameter(
            idempotency.REPLAYED_HEADER,
            str,
            OpenApiParameter.HEADER,
            response=[success],
            description="`true` when this is the stored response to an earlier request with the same key.",
        ),
        OpenApiParameter(
            "Retry-After",
            int,
            OpenApiParameter.HEADER,
            response=[409],
            description="Seconds to wait before retrying.",
        ),
    ]


class OrderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = OrderSerializer
    # JSON only: a form's values are all strings and an empty one counts as absent, so a form
    # could not be held to the schema's types (another Content-Type is 415, as documented).
    parser_classes = [JSONParser]
    filterset_fields = ["status"]

    def get_queryset(self):
        if self.action == "cancel":
            return order_list_cancelable_by(user=self.request.user)
        return order_list_visible_to(user=self.request.user)

    def get_throttles(self) -> list[BaseThrottle]:
        if self.action == "create":
            return [*super().get_throttles(), CreateRateThrottle()]
        return super().get_throttles()

    @extend_schema(
        request=OrderCreateSerializer,
        parameters=[
            *_idempotency_parameters(201),
            OpenApiParameter("Location", str, OpenApiParameter.HEADER, response=[201], description="The new order."),
        ],
        responses={
            201: OrderSerializer,
            409: OpenApiResponse(
                ErrorSerializer,
                description="A request with this Idempotency-Key is still in flight "
                "(`code` idempotency_key_in_flight).",
            ),
            422: OpenApiResponse(
                ErrorSerializer,
                description="This Idempotency-Key was used with a different request (`code` idempotency_key_mismatch).",
            ),
        },
    )
    @idempotency.idempotent
    def create(self, request: Request) -> Response:
        incoming = OrderCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        # The response is rendered before the order commits: whatever fails while building it
        # rolls the order back, so a client never gets a 5xx for an order that was accepted.
        with transaction.atomic():
            order = order_create(owner=request.user, **incoming.validated_data)
            location = reverse("order-detail", args=[order.id], request=request)
            body = OrderSerializer(order).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(
        request=None,
        parameters=_idempotency_parameters(202),
        responses={
            202: OpenApiResponse(
                OrderSerializer,
                description="Cancellation requested (status CANCELING), or already on its way: the order as it is "
                "now. It ends CANCELED if nothing was charged, REFUNDED if the charge was refunded, or "
                "PAYMENT_DECLINED / CANCELED_FRAUD if billing's outcome got there first.",
            ),
            400: OpenApiResponse(
                ErrorSerializer, description="A malformed Idempotency-Key (`code` idempotency_key_invalid)."
            ),
            404: OpenApiResponse(ErrorSerializer, description="No such order among this client's own orders."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="The order is over (CANCELED_FRAUD, PAYMENT_DECLINED, CANCELED or REFUNDED): `code` "
                "order_not_cancelable; or a request with this Idempotency-Key is still in flight "
                "(`code` idempotency_key_in_flight).",
            ),
            422: OpenApiResponse(
                ErrorSerializer,
                description="This Idempotency-Key was used with a different request (`code` idempotency_key_mismatch).",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    @idempotency.idempotent
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel the order: it is voided if not yet charged, refunded in full if it was."""
        order = self.get_object()  # an order this client may not cancel is 404, as another's is everywhere
        try:
            with transaction.atomic():
                order = order_request_cancel(order_id=order.pk, requested_by=f"api:{request.user.pk}")
                body = OrderSerializer(order).data
        except OrderNotCancelable as exc:
            return Response(
                {
                    "detail": f"The order is {exc.order.status} and can no longer be canceled.",
                    "code": "order_not_cancelable",
                },
                status=status.HTTP_409_CONFLICT,
            )
        return Response(body, status=status.HTTP_202_ACCEPTED)
