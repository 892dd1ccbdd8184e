"""The relay against real PostgreSQL and RabbitMQ: confirms, SKIP LOCKED, NOTIFY, outages."""

import threading
import time
import uuid

import environ
import pytest
from django.db import connection
from kombu.exceptions import OperationalError

from ordering import catalogue
from ordering.celery import app
from ordering.messaging.models import OutboxEvent
from ordering.messaging.outbox import NOTIFY_CHANNEL
from ordering.messaging.relay import BatchPacer, OutboxRelay, task_id_for
from tests.conftest import make_order
from tests.messaging.conftest import drain
from tests.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_relay_publishes_task_messages_and_marks_them_published(broker, user):
    orders = [make_order(user) for _ in range(3)]
    assert OutboxRelay(app).publish_pending() == 3
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    messages = drain(broker, catalogue.BILLING_QUEUE)
    assert len(messages) == 3
    for message in messages:
        headers = message.headers
        assert headers["task"] == catalogue.BILLING_HANDLE_ORDER_CREATED
        event = OutboxEvent.objects.get(pk=headers["event_id"])
        assert headers["id"] == task_id_for(event.id, catalogue.BILLING_HANDLE_ORDER_CREATED)
        assert message.properties["delivery_mode"] == 2  # persistent
        envelope = message.decode()[1]["envelope"]
        assert envelope["event_id"] == str(event.id)
        assert envelope["payload"]["amount"] == "10.00"
    assert {m.decode()[1]["envelope"]["aggregate_id"] for m in messages} == {str(o.id) for o in orders}


def test_two_relays_racing_publish_each_event_once(broker, user):
    for _ in range(60):
        make_order(user)
    published = []

    def relay_loop() -> None:
        relay = OutboxRelay(app, batch_size=5)
        try:
            while count := relay.publish_pending():
                published.append(count)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=relay_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(published) == 60
    messages = drain(broker, catalogue.BILLING_QUEUE)
    assert len(messages) == 60
    assert len({m.headers["id"] for m in messages}) == 60


def test_relay_with_broker_unreachable_marks_nothing_published(user, monkeypatch):
    make_order(user)
    # Celery reads CELERY_BROKER_URL from the environment before its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    with pytest.raises(OperationalError):
        OutboxRelay(app).publish_pending()
    assert OutboxEvent.objects.filter(published_at__isnull=True).count() == 1


def test_relay_wakes_on_commit_not_on_the_sweep(broker, user, settings):
    settings.MESSAGING = {**settings.MESSAGING, "RELAY_SWEEP_SECONDS": 60}
    stop = threading.Event()
    relay = OutboxRelay(app)
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        time.sleep(1)  # the relay is waiting on LISTEN, its next sweep a minute away
        started = time.monotonic()
        order = make_order(user)
        wait_until(
            lambda: OutboxEvent.objects.filter(aggregate_id=str(order.id), published_at__isnull=False).exists(),
            timeout=10,
            message="the relay to publish after the commit",
        )
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        thread.join(timeout=70)
    assert not thread.is_alive()


def test_relay_listens_through_the_listen_url_and_wakes_on_commit(broker, user, settings):
    """DATABASE_LISTEN_URL (a direct connection beside a pooler): the LISTEN session is opened with that URL's
    parameters, seen by PostgreSQL under the application_name only that URL sets, and the relay still wakes."""
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    name = f"relay-listen-{uuid.uuid4().hex[:8]}"
    url = f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}?application_name={name}"
    settings.MESSAGING = {
        **settings.MESSAGING,
        "RELAY_SWEEP_SECONDS": 60,
        "LISTEN_DATABASE": environ.Env.db_url_config(url),  # what settings make of DATABASE_LISTEN_URL
    }

    def listening_sessions() -> list[tuple[str]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT query FROM pg_stat_activity WHERE application_name = %s", [name])
            return cursor.fetchall()

    stop = threading.Event()
    relay = OutboxRelay(app)
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: listening_sessions() == [(f"LISTEN {NOTIFY_CHANNEL}",)], timeout=10, message="LISTEN")
        order = make_order(user)
        wait_until(
            lambda: OutboxEvent.objects.filter(aggregate_id=str(order.id), published_at__isnull=False).exists(),
            timeout=10,
            message="the relay to publish after the commit, woken through the listen connection",
        )
    finally:
        stop.set()
        thread.join(timeout=70)
    assert not thread.is_alive()
    assert listening_sessions() == []


def test_relay_never_marks_an_unroutable_event_published(broker, user):
    """A deleted queue: the broker returns the message instead of dropping it; the relay retries."""
    make_order(user)
    relay = OutboxRelay(app)
    relay.connect()  # declares the topology; the queue then goes
    broker.default_channel.queue_delete(catalogue.BILLING_QUEUE)
    with pytest.raises(Exception):  # noqa: B017 - the broker's return, raised by py-amqp
        relay.publish_pending()
    assert OutboxEvent.objects.filter(published_at__isnull=True).count() == 1
    assert relay.publish_pending() == 1  # topology declared again, then published
    assert len(drain(broker, catalogue.BILLING_QUEUE)) == 1


def test_pacer_publishes_at_once_when_quiet():
    pacer = BatchPacer(coalesce_seconds=0.015, busy_batches_per_second=3)
    # Batches back to back, but fewer than three within a second: no pause.
    assert [pacer.pause_before_batch(now) for now in (10.0, 10.001, 11.5, 11.501)] == [0, 0, 0, 0]


def test_pacer_lets_commits_gather_under_load():
    pacer = BatchPacer(coalesce_seconds=0.015, busy_batches_per_second=3)
    for now in (10.0, 10.001, 10.002):
        assert pacer.pause_before_batch(now) == 0
    # The fourth batch within a second waits until 15 ms after the previous one began.
    assert pacer.pause_before_batch(10.005) == pytest.approx(0.012)
    # One that comes later than that does not wait.
    assert pacer.pause_before_batch(10.1) == 0
    # Load gone: a batch a second later is quiet again.
    assert pacer.pause_before_batch(11.2) == 0
