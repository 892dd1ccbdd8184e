"""The envelope: what a consumer accepts, and the permanent errors for what it must not."""

import json
import uuid

import pytest

from ordering.messaging.envelope import Envelope
from ordering.messaging.errors import InvalidPayload, MalformedEnvelope, UnknownEventVersion
from orders.events import OrderCreated


def wire(**overrides) -> dict:
    data = {
        "event_id": str(uuid.uuid4()),
        "event_type": "orders.order.created",
        "version": 1,
        "occurred_at": "2026-11-26T10:00:00+00:00",
        "aggregate_id": str(uuid.uuid4()),
        "correlation_id": "abc",
        "causation_id": None,
        "payload": {},
    }
    data.update(overrides)
    return data


def test_envelope_round_trips_through_json():
    envelope = Envelope.from_wire(wire(causation_id=str(uuid.uuid4())))
    assert Envelope.from_wire(json.loads(json.dumps(envelope.to_wire()))) == envelope


@pytest.mark.parametrize(
    "data",
    [
        "not an object",
        ["a", "list"],
        {"event_id": "x"},
        wire(event_id="not-a-uuid"),
        wire(version="1"),
        wire(version=True),
        wire(occurred_at="yesterday"),
        wire(payload="text"),
    ],
)
def test_envelope_malformed_is_a_permanent_error(data):
    with pytest.raises(MalformedEnvelope):
        Envelope.from_wire(data)


@pytest.mark.parametrize("data", [wire(event_type="orders.order.exploded"), wire(version=99)])
def test_envelope_unknown_type_or_version_is_a_permanent_error(data):
    with pytest.raises(UnknownEventVersion):
        Envelope.from_wire(data)


def test_envelope_event_checks_payload_against_the_contract():
    envelope = Envelope.from_wire(wire(payload={"order_id": "x", "quantity": "two"}))
    with pytest.raises(InvalidPayload):
        envelope.event(OrderCreated)
