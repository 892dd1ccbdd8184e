"""API shapes of an order: what a client may send, what it gets back."""

import re
from decimal import Decimal

from django.conf import settings
from django.utils.functional import lazy
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders.events import normalize_buyer
from orders.models import Order, OrderStatus

# A price as the API accepts it: a decimal string from 0.01 to 9999999999.99 (numeric(12, 2)),
# in one spelling: no sign, exponent, whitespace or leading zero. The OpenAPI schema publishes this
# pattern and the API applies the same one, so they cannot disagree (JSON Schema patterns are
# ECMA 262 regexes: no lookarounds, [0-9] not \d, which is wider in Python).
PRICE_PATTERN = r"^(?:[1-9][0-9]{0,9}(?:\.[0-9]{1,2})?|0\.(?:0[1-9]|[1-9][0-9]?))$"
_PRICE = re.compile(PRICE_PATTERN)


def _price_help() -> str:
    return (
        'A decimal string, e.g. "249.90": 0.01 to 9999999999.99, at most 2 decimals (a JSON number is '
        f"refused: money travels as strings). The order's total, price x quantity, may not exceed "
        f"{settings.ORDER_AMOUNT_MAX} (400 otherwise)."
    )


@extend_schema_field({"type": "string", "format": "decimal", "pattern": PRICE_PATTERN, "example": "249.90"})
class PriceField(serializers.DecimalField):
    """A unit price: only the strings PRICE_PATTERN matches (DRF's DecimalField would also take JSON
    numbers, exponents, signs and padding, which the schema does not allow)."""

    default_error_messages = {
        "invalid": 'Enter a decimal string from 0.01 to 9999999999.99 with at most 2 decimals, e.g. "249.90".'
    }

    def __init__(self, **kwargs) -> None:
        super().__init__(max_digits=12, decimal_places=2, min_value=Decimal("0.01"), **kwargs)

    def to_internal_value(self, data: object) -> Decimal:
        if not isinstance(data, str) or not _PRICE.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class _JSONTyped:
    """A JSON value must have the type the schema gives it: DRF would also take 5 for a string and
    "5", 5.0 or true for an integer (the orders API parses JSON only: orders/apis.py)."""

    json_types: tuple[type, ...]

    def to_internal_value(self, data: object) -> object:
        if isinstance(data, bool) or not isinstance(data, self.json_types):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_JSONTyped, serializers.CharField):
    json_types = (str,)


class StrictIntegerField(_JSONTyped, serializers.IntegerField):
    json_types = (int,)


class OrderCreateSerializer(serializers.Serializer):
    """Input of POST /api/orders/. Status, owner and ids are never the client's to set."""

    # An unknown field is refused (400), and the schema says so (ordering/schema.py).
    refuses_unknown_fields = True

    # Taken as sent: trimmed, a name the schema holds to 200 characters could pass with more.
    product_name = StrictCharField(min_length=1, max_length=200, trim_whitespace=False)
    quantity = StrictIntegerField(min_value=1, max_value=10_000, default=1)
    price = PriceField(help_text=lazy(_price_help, str)())
    # Exactly the configured codes, in upper case: the schema lists them as an enum.
    currency = serializers.ChoiceField(choices=settings.ORDER_CURRENCIES, default=settings.ORDER_DEFAULT_CURRENCY)
    buyer = serializers.EmailField(max_length=254, help_text="The buyer's email address; stored in lower case.")

    def validate_buyer(self, value: str) -> str:
        # One spelling per buyer: fraud's blocklist and velocity rule compare addresses exactly.
        return normalize_buyer(value)

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: "unknown or read-only field: the client cannot set it" for name in unknown}
            )
        if attrs["price"] * attrs.get("quantity", 1) > settings.ORDER_AMOUNT_MAX:
            raise serializers.ValidationError(
                {"price": f"the order's total (price x quantity) may not exceed {settings.ORDER_AMOUNT_MAX}"}
            )
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
        if order.refund_reference:
            return {
                "outcome": "refunded",
                "reference": order.payment_reference,
                "refund_reference": order.refund_reference,
            }
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
