"""The catalogue is the one registry of wire names: everything else must agree with it."""

import dataclasses

from django.conf import settings

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.envelope import DomainEvent
from ordering.messaging.topology import task_queues
from tests.contracts.test_contracts import event_classes

EVENT_CLASSES = event_classes()


def test_every_subscribed_task_is_registered_with_an_explicit_name():
    app.loader.import_default_modules()
    for subscription in catalogue.SUBSCRIPTIONS:
        assert subscription.task_name in app.tasks, subscription
        task = app.tasks[subscription.task_name]
        assert task.acks_late
        assert task.ignore_result


def test_every_event_version_has_one_event_class():
    versions = {(t, v) for t, known in catalogue.EVENT_VERSIONS.items() for v in known}
    assert set(EVENT_CLASSES) == versions
    assert len(EVENT_CLASSES) == len(DomainEvent.__subclasses__())  # no two classes for one version
    assert all(dataclasses.is_dataclass(cls) for cls in EVENT_CLASSES.values())


def test_every_event_type_has_a_subscriber_on_a_consumer_queue():
    for event_type in catalogue.EVENT_VERSIONS:
        subscriptions = catalogue.subscriptions_for(event_type)
        assert subscriptions, event_type
        assert all(s.queue in catalogue.CONSUMER_QUEUES for s in subscriptions)


def test_worker_and_producer_share_the_queue_definitions():
    app.loader.import_default_modules()
    configured = {q.name: q for q in app.conf.task_queues}
    assert set(configured) == {*catalogue.CONSUMER_QUEUES, catalogue.MAINTENANCE_QUEUE}
    for queue in task_queues():
        assert configured[queue.name].queue_arguments == queue.queue_arguments
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        if queue.name in catalogue.CONSUMER_QUEUES:
            assert queue.queue_arguments["x-dead-letter-exchange"] == catalogue.DEAD_LETTER_EXCHANGE


def test_failed_tasks_are_rejected_not_acked():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_acks_on_failure is False
    assert conf.task_acks_on_timeout is False
    assert conf.task_reject_on_worker_lost is True
    # Prefetch: one batch per pool process (ordering/messaging/batching.py).
    assert conf.worker_prefetch_multiplier == settings.MESSAGING["CONSUMER_BATCH_MAX"]
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_store_errors_even_if_ignored is True
