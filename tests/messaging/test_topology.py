"""Declaring the topology over queues an earlier version declared with other arguments."""

import pytest
from kombu import Queue

from ordering import catalogue
from ordering.messaging.topology import TopologyMismatch, dead_letter_queue, declare_topology

BILLING_DLQ = catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)


def test_a_classic_dead_letter_queue_left_by_an_earlier_version_is_named_with_what_to_do(broker):
    channel = broker.channel()
    dead_letter_queue(catalogue.BILLING_QUEUE).bind(channel).delete()
    Queue(BILLING_DLQ, durable=True, queue_arguments={"x-queue-type": "classic"}).bind(channel).declare()
    try:
        with pytest.raises(TopologyMismatch) as raised:
            declare_topology(broker.clone())
    finally:
        channel = broker.channel()
        Queue(BILLING_DLQ, no_declare=True).bind(channel).delete()
        declare_topology(broker.clone())

    assert BILLING_DLQ in str(raised.value)
    assert "x-queue-type" in str(raised.value)
    assert "delete it and declare the topology again" in str(raised.value)
