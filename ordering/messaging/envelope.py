"""Domain events and the envelope that carries one over the wire."""

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

from ordering import catalogue
from ordering.messaging.errors import InvalidPayload, MalformedEnvelope, UnknownEventVersion

ENVELOPE_FIELDS = (
    "event_id",
    "event_type",
    "version",
    "occurred_at",
    "aggregate_id",
    "correlation_id",
    "causation_id",
    "payload",
)


@dataclass(frozen=True)
class DomainEvent:
    """Base of every domain event: a frozen dataclass whose fields are the JSON payload.

    Fields hold JSON types only (money travels as a decimal string). `aggregate_id` names the
    order the event belongs to: every event of this system is about exactly one order.
    """

    event_type: ClassVar[str]
    version: ClassVar[int]

    order_id: str

    @property
    def aggregate_id(self) -> str:
        return self.order_id

    def to_payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        if not isinstance(payload, dict):
            raise InvalidPayload(f"{cls.event_type}: payload is not an object")
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in payload:
                raise InvalidPayload(f"{cls.event_type}: payload lacks {field.name!r}")
            value = payload[field.name]
            expected = field.type if isinstance(field.type, type) else None
            if expected in (str, int, bool, list) and not isinstance(value, expected):
                raise InvalidPayload(
                    f"{cls.event_type}: {field.name!r} must be {expected.__name__}, got {type(value).__name__}"
                )
            values[field.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Envelope:
    """What travels: the event's identity and lineage around its payload.

    `event_id` is also the idempotency key of every consumer. `correlation_id` comes from the
    HTTP request that started the flow and is carried through every hop; `causation_id` is the
    id of the event whose handling produced this one.
    """

    event_id: uuid.UUID
    event_type: str
    version: int
    occurred_at: datetime
    aggregate_id: str
    correlation_id: str
    causation_id: uuid.UUID | None
    payload: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "aggregate_id": self.aggregate_id,
            "correlation_id": self.correlation_id,
            "causation_id": str(self.causation_id) if self.causation_id else None,
            "payload": self.payload,
        }

    @classmethod
    def from_wire(cls, data: object) -> Self:
        """Parse and check an envelope; raises MalformedEnvelope or UnknownEventVersion."""
        if not isinstance(data, dict):
            raise MalformedEnvelope(f"envelope must be an object, got {type(data).__name__}")
        missing = [name for name in ENVELOPE_FIELDS if name not in data]
        if missing:
            raise MalformedEnvelope(f"envelope lacks {', '.join(missing)}")
        try:
            envelope = cls(
                event_id=uuid.UUID(str(data["event_id"])),
                event_type=str(data["event_type"]),
                version=_strict_int(data["version"]),
                occurred_at=datetime.fromisoformat(str(data["occurred_at"])),
                aggregate_id=str(data["aggregate_id"]),
                correlation_id=str(data["correlation_id"]),
                causation_id=uuid.UUID(str(data["causation_id"])) if data["causation_id"] else None,
                payload=data["payload"],
            )
        except (TypeError, ValueError) as exc:
            raise MalformedEnvelope(f"envelope field has a bad value: {exc}") from exc
        if not isinstance(envelope.payload, dict):
            raise MalformedEnvelope("envelope payload must be an object")
        known_versions = catalogue.EVENT_VERSIONS.get(envelope.event_type)
        if known_versions is None:
            raise UnknownEventVersion(f"unknown event type {envelope.event_type!r}")
        if envelope.version not in known_versions:
            raise UnknownEventVersion(
                f"{envelope.event_type} v{envelope.version} is not one of {sorted(known_versions)}"
            )
        return envelope

    def event[E: DomainEvent](self, *event_classes: type[E]) -> E:
        """The payload as the one of `event_classes` whose type and version match the envelope's."""
        for event_class in event_classes:
            if (self.event_type, self.version) == (event_class.event_type, event_class.version):
                event = event_class.from_payload(self.payload)
                # Consumers act on the envelope's aggregate: a payload about another order is
                # forged or broken, never to be applied to this one.
                if event.aggregate_id != self.aggregate_id:
                    raise InvalidPayload(
                        f"{self.event_type}: payload order {event.aggregate_id!r} is not the envelope's "
                        f"aggregate {self.aggregate_id!r}"
                    )
                return event
        expected = ", ".join(f"{c.event_type} v{c.version}" for c in event_classes)
        raise UnknownEventVersion(f"expected {expected}, got {self.event_type} v{self.version}")


def _strict_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"version must be an integer, got {value!r}")
    return value
