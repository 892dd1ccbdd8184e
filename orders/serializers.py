"""API shapes of an order: what a client may send, what it gets back."""

from decimal import Decimal

from django.conf import settings
from rest_framework import serializers

from orders.models import Order, OrderStatus


class OrderCreateSerializer(serializers.Serializer):
    """Input of POST /api/orders/. Status, owner and ids are never the client's to set."""

    product_name = serializers.CharField(max_length=200)
    quantity = serializers.IntegerField(min_value=1, max_value=10_000, default=1)
    price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal("0.01"))
    currency = serializers.CharField(max_length=3, required=False)
    buyer = serializers.CharField(max_length=254)

    def validate_currency(self, value: str) -> str:
        value = value.upper()
        if value not in settings.ORDER_CURRENCIES:
            raise serializers.ValidationError(f"must be one of {', '.join(settings.ORDER_CURRENCIES)}")
        return value

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: "unknown or read-only field: the client cannot set it" for name in unknown}
            )
        attrs.setdefault("currency", settings.ORDER_DEFAULT_CURRENCY)
        return attrs


class OrderSerializer(serializers.Serializer):
    """An order as the API shows it, with the fraud and payment outcome once known.

    Every field declared (read-only): they define the schema and the formatting. Rendering uses
    them as declared: DRF would deep-copy all of them for each serializer instance, which costs
    more than the rest of rendering an order (tests/orders/test_api.py holds the output equal to
    DRF's own rendering).
    """

    id = serializers.UUIDField(read_only=True)
    status = serializers.ChoiceField(choices=OrderStatus.choices, read_only=True)
    status_reason = serializers.CharField(read_only=True)
    product_name = serializers.CharField(read_only=True)
    quantity = serializers.IntegerField(read_only=True)
    price = serializers.DecimalField(max_digits=12, decimal_places=2, read_only=True)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)
    currency = serializers.CharField(read_only=True)
    buyer = serializers.CharField(read_only=True)
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    fraud = serializers.SerializerMethodField()
    payment = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def to_representation(self, order: Order) -> dict:
        declared = self._declared_fields
        representation = {}
        for name in _PLAIN_FIELDS:
            value = getattr(order, name)
            representation[name] = None if value is None else declared[name].to_representation(value)
        representation["owner"] = order.owner.get_username()
        representation["fraud"] = self.get_fraud(order)
        representation["payment"] = self.get_payment(order)
        return {name: representation[name] for name in declared}

    def get_fraud(self, order: Order) -> dict | None:
        if not order.fraud_decision:
            return None
        return {"decision": order.fraud_decision, "score": order.fraud_score, "reasons": order.fraud_reasons}

    def get_payment(self, order: Order) -> dict | None:
        if order.payment_reference:
            return {"outcome": "captured", "reference": order.payment_reference}
        if order.status == "PAYMENT_DECLINED":
            return {"outcome": "declined", "reason": order.status_reason}
        return None


_PLAIN_FIELDS = [
    name
    for name, field in OrderSerializer._declared_fields.items()
    if not isinstance(field, serializers.SerializerMethodField) and field.source is None
]
