"""Batches published with publisher confirms, against the real RabbitMQ."""

import json

import pytest

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.publisher import (
    ConfirmedPublisher,
    OutgoingMessage,
    PublishFailed,
    connection_for_confirmed_batches,
)
from tests.messaging.conftest import drain


def message(n: int, routing_key: str = catalogue.BILLING_QUEUE) -> OutgoingMessage:
    return OutgoingMessage(
        exchange=catalogue.EVENTS_EXCHANGE,
        routing_key=routing_key,
        body=json.dumps({"n": n}).encode(),
        headers={"n": n},
        properties={"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2},
    )


@pytest.fixture
def publisher(broker):
    with connection_for_confirmed_batches(app) as connection:
        publisher = ConfirmedPublisher(connection, confirm_timeout=10)
        yield publisher
        publisher.close()


def test_a_batch_is_in_its_queue_once_publish_returns(broker, publisher):
    publisher.publish([message(n) for n in range(300)])
    messages = drain(broker, catalogue.BILLING_QUEUE)
    assert sorted(m.headers["n"] for m in messages) == list(range(300))
    assert {m.properties["delivery_mode"] for m in messages} == {2}


def test_an_unroutable_message_fails_the_whole_batch_and_says_which(broker, publisher):
    with pytest.raises(PublishFailed, match="1 returned") as failed:
        publisher.publish([message(1), message(2, routing_key="no.such.queue"), message(3)])
    assert failed.value.returned == [1]  # the others were confirmed
    assert sorted(m.headers["n"] for m in drain(broker, catalogue.BILLING_QUEUE)) == [1, 3]


def test_the_next_batch_after_a_failure_is_confirmed(broker, publisher):
    with pytest.raises(PublishFailed):
        publisher.publish([message(1, routing_key="no.such.queue")])
    publisher.publish([message(2), message(3)])
    assert sorted(m.headers["n"] for m in drain(broker, catalogue.BILLING_QUEUE)) == [2, 3]


def test_the_connection_does_not_confirm_each_message_on_its_own():
    # With kombu's confirm_publish py-amqp would wait for a confirm after every message.
    with connection_for_confirmed_batches(app) as connection:
        assert connection.transport_options.get("confirm_publish") is False
