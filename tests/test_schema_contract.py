"""The API keeps the contract its OpenAPI schema states: schemathesis against /api/schema/, in process.

schemathesis reads the live schema from the app and sends generated requests, valid and invalid,
through the WSGI application to the real (test) PostgreSQL, then holds each response to the
schema: no 5xx, only documented status codes, bodies, headers and content types, and invalid
input refused. The plain tests below pin the parts of the schema the run depends on, so a
regression names itself instead of hiding among generated cases.
"""

import re

import hypothesis
import pytest
import schemathesis
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from ordering.wsgi import application
from tests.conftest import make_order

# A few hundred cases in all (the coverage phase's boundary cases, then this many generated
# ones per operation), about a minute on two cores. Deterministic: a failure reproduces run after
# run, and no example database is kept.
CONTRACT_CONFIG = {
    "generation": {"max-examples": 100, "deterministic": True, "database": "none"},
    "checks": {
        # Valid data may still be refused, by rules JSON Schema cannot state: the order's total
        # (price x quantity, settings.ORDER_AMOUNT_MAX) and Django's stricter email grammar.
        "positive_data_acceptance": {"enabled": False},
    },
}

# Loaded while pytest collects (one test per operation): the schema view reads no table, so the
# database pytest-django still blocks then is not needed. (schemathesis.pytest.from_fixture, which
# would load it in a fixture, does not work with pytest 9.)
contract = schemathesis.openapi.from_wsgi(
    "/api/schema/", application, config=schemathesis.Config.from_dict(CONTRACT_CONFIG)
)


@pytest.fixture
def contract_client(transactional_db, django_user_model, monkeypatch) -> dict[str, str]:
    """The headers of a client that may create orders, with no rate limit."""
    # Hundreds of requests a minute from one client: the throttles would answer 429 (documented,
    # and tested in tests/test_throttling.py) and hide everything else.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": None, "create": None, "anon": None})
    client = django_user_model.objects.create_user(username="contract-client", password="unused")
    make_order(client)  # so that the list's results are held to the schema too
    return {"Authorization": f"Token {Token.objects.create(user=client).key}"}


# Each request commits, as in production: the transactional database is flushed after each operation.
@pytest.mark.django_db(transaction=True)
@contract.parametrize()
# The cases of one operation share its client and database on purpose; a request to the
# database is slower than Hypothesis expects of a test.
@hypothesis.settings(
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow]
)
def test_the_api_keeps_its_schema(case, contract_client):
    case.call_and_validate(headers=contract_client)


# --- The schema's statements the run relies on -----------------------------------------------


@pytest.fixture
def schema(db) -> dict:
    return APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def test_the_price_pattern_is_exactly_the_prices_the_api_accepts(schema):
    pattern = schema["components"]["schemas"]["OrderCreate"]["properties"]["price"]["pattern"]
    accepted = ["0.01", "0.1", "0.99", "1", "249.90", "9999999999.99"]
    refused = ["", "-1", "0", "0.0", "0.00", "0.001", "1.", ".5", "01", "+1", "1e2", " 1", "10000000000"]
    assert [value for value in accepted if not re.search(pattern, value)] == []
    assert [value for value in refused if re.search(pattern, value)] == []


@pytest.mark.parametrize("price", ["", "-1", "0", "0.00", "1e2", " 1.00", "01.00", 12.5])
def test_the_api_refuses_a_price_the_schema_refuses(api_client, price):
    order = {"product_name": "Lamp", "price": price, "buyer": "ann@example.com"}
    response = api_client.post("/api/orders/", order, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["price"]


@pytest.mark.parametrize(
    "change",
    [{"product_name": 5}, {"quantity": "2"}, {"quantity": 2.0}, {"quantity": True}, {"product_name": " " + "x" * 200}],
)
def test_a_json_value_is_taken_as_the_schema_types_it(api_client, change):
    # DRF alone would take these (a number as a name, "2" or 2.0 as a quantity, a name trimmed
    # to 200 characters): the schema refuses them, so the API does.
    order = {"product_name": "Lamp", "price": "1.00", "buyer": "ann@example.com", **change}
    response = api_client.post("/api/orders/", order, format="json")
    assert response.status_code == 400
    assert list(response.json()) == list(change)


def test_an_order_is_json_only(api_client, schema):
    order = {"product_name": "Lamp", "quantity": "2", "price": "1.00", "buyer": "ann@example.com"}
    assert api_client.post("/api/orders/", order).status_code == 415  # multipart, the test client's default
    assert list(schema["paths"]["/api/orders/"]["post"]["requestBody"]["content"]) == ["application/json"]


def test_an_unknown_api_url_is_a_json_404(api_client):
    response = api_client.get("/api/orders/not.an.id/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("price", ["0.01", "0.5", "9999.99"])
def test_the_api_accepts_a_price_the_schema_accepts(api_client, price):
    order = {"product_name": "Lamp", "price": price, "buyer": "ann@example.com"}
    assert api_client.post("/api/orders/", order, format="json").status_code == 201


def test_the_order_body_is_closed_and_its_currency_an_enum(schema, settings):
    body = schema["components"]["schemas"]["OrderCreate"]
    assert body["additionalProperties"] is False
    currency = schema["components"]["schemas"]["CurrencyEnum"]
    assert currency["enum"] == settings.ORDER_CURRENCIES
    assert body["properties"]["buyer"]["format"] == "email"
    assert str(settings.ORDER_AMOUNT_MAX) in body["properties"]["price"]["description"]


@pytest.mark.parametrize(
    ("path", "method", "codes"),
    [
        ("/api/orders/", "get", {"200", "400", "401", "404", "406", "429", "503"}),
        ("/api/orders/", "post", {"201", "400", "401", "403", "406", "409", "415", "422", "429", "503"}),
        ("/api/orders/{id}/", "get", {"200", "401", "404", "406", "429", "503"}),
        ("/api/orders/{id}/cancel/", "post", {"202", "400", "401", "403", "404", "406", "409", "422", "429", "503"}),
    ],
)
def test_every_operation_documents_the_responses_it_can_give(schema, path, method, codes):
    responses = schema["paths"][path][method]["responses"]
    assert set(responses) == codes
    for code in codes - {"200", "201", "202"}:
        assert responses[code]["content"]["application/json"]["schema"], code
    for code in ("429", "503"):
        assert "Retry-After" in responses[code]["headers"]


def test_the_status_filter_is_documented_and_an_invalid_value_is_a_field_error(schema, api_client):
    parameters = {p["name"]: p for p in schema["paths"]["/api/orders/"]["get"]["parameters"]}
    assert set(parameters["status"]["schema"]["enum"]) == {
        "PENDING",
        "PROCESSED",
        "CANCELED_FRAUD",
        "PAYMENT_DECLINED",
        "CANCELING",
        "CANCELED",
        "REFUNDED",
    }
    response = api_client.get("/api/orders/?status=SHIPPED")
    assert response.status_code == 400
    assert list(response.json()) == ["status"]


def test_a_lowercase_currency_is_refused(api_client):
    order = {"product_name": "Lamp", "price": "1.00", "buyer": "ann@example.com", "currency": "usd"}
    response = api_client.post("/api/orders/", order, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["currency"]
