"""One example JSON per event type and version: the published contract, checked both ways."""

import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from django.apps import apps

from ordering import catalogue
from ordering.messaging.envelope import DomainEvent, Envelope

CONTRACTS = Path(__file__).parent / "events"


def event_classes() -> dict[tuple[str, int], type[DomainEvent]]:
    """Every event class of every app's contract module (`<app>/events.py`), by type and version."""
    for config in apps.get_app_configs():
        if importlib.util.find_spec(f"{config.name}.events") is not None:
            importlib.import_module(f"{config.name}.events")
    return {(cls.event_type, cls.version): cls for cls in DomainEvent.__subclasses__()}


EVENT_CLASSES = event_classes()
ALL_VERSIONS = [(t, v) for t, versions in catalogue.EVENT_VERSIONS.items() for v in sorted(versions)]


@pytest.mark.parametrize(("event_type", "version"), ALL_VERSIONS)
def test_contract_example_exists_and_parses(event_type, version):
    path = CONTRACTS / f"{event_type}.v{version}.json"
    assert path.exists(), f"missing contract example {path.name}"
    envelope = Envelope.from_wire(json.loads(path.read_text()))
    event = envelope.event(EVENT_CLASSES[(event_type, version)])
    # The example holds exactly the contract's fields: no more, no fewer.
    assert event.to_payload() == envelope.payload


def test_no_contract_example_without_a_known_event_version():
    for path in CONTRACTS.glob("*.json"):
        event_type, _, version = path.stem.rpartition(".v")
        assert int(version) in catalogue.EVENT_VERSIONS.get(event_type, ()), path.name
