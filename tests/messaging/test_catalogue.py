"""The catalogue is the one registry of wire names: everything else must agree with it."""

import dataclasses

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.envelope import DomainEvent
from ordering.messaging.topology import task_queues

EVENT_CLASSES = {cls.event_type: cls for cls in DomainEvent.__subclasses__()}


def test_every_subscribed_task_is_registered_with_an_explicit_name():
    app.loader.import_default_modules()
    for subscription in catalogue.SUBSCRIPTIONS:
        assert subscription.task_name in app.tasks, subscription
        task = app.tasks[subscription.task_name]
        assert task.acks_late
        assert task.ignore_result


def test_every_event_type_has_one_event_class_and_known_versions():
    assert set(EVENT_CLASSES) == set(catalogue.EVENT_VERSIONS)
    for event_type, cls in EVENT_CLASSES.items():
        assert cls.version in catalogue.EVENT_VERSIONS[event_type]
        assert dataclasses.is_dataclass(cls)


def test_every_event_type_has_a_subscriber_on_a_consumer_queue():
    for event_type in catalogue.EVENT_VERSIONS:
        subscriptions = catalogue.subscriptions_for(event_type)
        assert subscriptions, event_type
        assert all(s.queue in catalogue.CONSUMER_QUEUES for s in subscriptions)


def test_worker_and_producer_share_the_queue_definitions():
    app.loader.import_default_modules()
    configured = {q.name: q for q in app.conf.task_queues}
    assert set(configured) == set(catalogue.CONSUMER_QUEUES)
    for queue in task_queues():
        assert configured[queue.name].queue_arguments == queue.queue_arguments
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        assert queue.queue_arguments["x-dead-letter-exchange"] == catalogue.DEAD_LETTER_EXCHANGE


def test_failed_tasks_are_rejected_not_acked():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_acks_on_failure is False
    assert conf.task_acks_on_timeout is False
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_store_errors_even_if_ignored is True
