"""Publishing a batch with publisher confirms: every message first, then one wait for the broker's acks.

kombu's `confirm_publish` waits for each message's confirm before the next publish: a broker
round trip (and, for a quorum queue, a replicated, fsynced log write) per message. Here one
channel in confirm mode publishes a whole batch and then collects the broker's acks, which may
acknowledge several messages at once (`multiple`). The batch counts as published only when every
message is acked; a nack, a returned (unroutable, mandatory) message, a timeout or a lost
connection fail the whole batch, and the caller publishes it again: consumers are idempotent.
"""

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
from kombu import Connection


@dataclass(frozen=True)
class OutgoingMessage:
    """A message ready for the wire: body bytes, headers and AMQP properties."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)


class PublishFailed(Exception):
    """The broker did not take every message of a batch; none of it may be counted as published.

    `returned` lists the positions of the messages the broker returned as unroutable, when that
    was the only failure: the other messages of the batch were then confirmed.
    """

    def __init__(self, message: str, returned: list[int] | None = None) -> None:
        super().__init__(message)
        self.returned = returned


class ConfirmedPublisher:
    """Publishes batches on one confirm-mode channel of `connection`.

    The connection must not have kombu's `confirm_publish` transport option (with it py-amqp
    waits per message); `connection_for_confirmed_batches()` makes one.
    """

    def __init__(self, connection: Connection, *, confirm_timeout: float) -> None:
        self.connection = connection
        self.confirm_timeout = confirm_timeout
        self._channel: amqp.Channel | None = None
        self._published = 0  # delivery tags the broker gave this channel's publishes: 1, 2, ...
        self._unconfirmed: set[int] = set()
        self._nacked = 0
        self._returned: list[tuple[str, bytes]] = []

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish `messages` (persistent, mandatory); return once the broker confirmed them all."""
        if not messages:
            return
        channel = self._confirm_channel()
        self._nacked = 0
        self._returned = []
        try:
            for message in messages:
                channel.basic_publish(
                    amqp.Message(message.body, application_headers=message.headers, **message.properties),
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    # Unroutable must fail, not be confirmed and dropped: the broker returns it.
                    mandatory=True,
                )
                self._published += 1
                self._unconfirmed.add(self._published)
            deadline = time.monotonic() + self.confirm_timeout
            while self._unconfirmed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishFailed(f"{len(self._unconfirmed)} of {len(messages)} not confirmed in time")
                self.connection.drain_events(timeout=left)
        except BaseException:
            # The channel's count of tags is no longer trustworthy: start the next batch afresh.
            self.close()
            raise
        if self._returned or self._nacked:
            returned_to = sorted({routing_key for routing_key, _ in self._returned})
            raise PublishFailed(
                f"{len(self._returned)} returned ({', '.join(returned_to)}), {self._nacked} nacked",
                returned=None if self._nacked else _positions(messages, self._returned),
            )

    def close(self) -> None:
        channel, self._channel = self._channel, None
        self._unconfirmed.clear()
        if channel is not None:
            # The connection may be gone already: then there is nothing left to release.
            with contextlib.suppress(Exception):
                channel.close()

    def _confirm_channel(self) -> amqp.Channel:
        if self._channel is None or not self._channel.is_open:
            channel = self.connection.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._channel, self._published = channel, 0
            self._unconfirmed.clear()
        return self._channel

    def _settle(self, delivery_tag: int, multiple: bool) -> int:
        settled = {tag for tag in self._unconfirmed if tag <= delivery_tag} if multiple else {delivery_tag}
        self._unconfirmed -= settled
        return len(settled)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._nacked += self._settle(delivery_tag, multiple)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: amqp.Message) -> None:
        # basic.return comes before the ack of the same message: the batch fails when it is acked.
        body = message.body
        if isinstance(body, str):  # py-amqp decodes a body that declares its encoding
            body = body.encode(message.properties.get("content_encoding") or "utf-8")
        self._returned.append((routing_key, body))


def _positions(messages: Sequence[OutgoingMessage], returned: list[tuple[str, bytes]]) -> list[int] | None:
    """Which of `messages` came back (known by routing key and body); None if not all can be told."""
    left = list(returned)
    positions = []
    for position, message in enumerate(messages):
        key = (message.routing_key, message.body)
        if key in left:
            left.remove(key)
            positions.append(position)
    return None if left else positions


def connection_for_confirmed_batches(app, url: str | None = None) -> Connection:
    """A broker connection for ConfirmedPublisher: the app's settings without per-message confirms."""
    return app.connection_for_write(url=url, transport_options={"confirm_publish": False})
