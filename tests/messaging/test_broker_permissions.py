"""The least-privilege broker users of docker-compose (scripts/rabbitmq_users.py), on the real broker.

The users are created in the test run's vhost with the script's own permission table; the relay
and the workers run as real processes with BROKER_DECLARE_TOPOLOGY=false, as compose runs them.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import amqp
import pytest
from amqp.exceptions import AccessRefused, NotFound
from health_check.exceptions import ServiceUnavailable
from kombu import Connection

from ordering import catalogue
from ordering.celery import app
from ordering.health import ConsumerQueues
from ordering.messaging.replay import ReplayCriteria, dead_letters_discard, dead_letters_replay
from orders.models import Order
from tests.conftest import make_order
from tests.integration.conftest import process_env
from tests.integration.test_watchdog import stuck_order
from tests.isolation import VHOST
from tests.messaging.conftest import drain
from tests.messaging.test_replay import put_dead_letter
from tests.processes import ProcessGroup, wait_until
from tests.services import rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROLES = ("topology", "relay", "billing", "orders", "flower", "console")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def users():
    """name of each role's user -> its broker URL; the users are deleted after the module."""
    prefix = f"test-{uuid.uuid4().hex[:6]}-"
    passwords = {role: uuid.uuid4().hex for role in ROLES}
    env = {**os.environ, **{f"RABBITMQ_{role.upper()}_PASSWORD": pw for role, pw in passwords.items()}}
    subprocess.run(
        [sys.executable, "-m", "scripts.rabbitmq_users", "--rabbitmqctl", "--vhost", VHOST, "--user-prefix", prefix],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield {role: f"amqp://{prefix}{role}:{pw}@127.0.0.1:5672/{VHOST}" for role, pw in passwords.items()}
    finally:
        for role in ROLES:
            rabbitmqctl("delete_user", prefix + role, check=False)


def test_the_pipeline_runs_with_each_process_on_its_own_least_privilege_user(broker, users, user, tmp_path):
    # The migrate job's part: the topology user declares the topology.
    subprocess.run(
        [sys.executable, "manage.py", "declare_topology"],
        cwd=ROOT, env={**process_env(), "CELERY_BROKER_URL": users["topology"]}, check=True, capture_output=True,
    )  # fmt: skip
    group = ProcessGroup(env={**process_env(), "BROKER_DECLARE_TOPOLOGY": "false"}, log_dir=tmp_path)
    group.add_relay(CELERY_BROKER_URL=users["relay"])
    group.add_worker("billing", catalogue.BILLING_QUEUE, concurrency=1, CELERY_BROKER_URL=users["billing"])
    # As the Procfile runs them: the orders worker runs beat's periodic jobs too; beat on the relay's user.
    orders_queues = f"{catalogue.ORDERS_QUEUE},{catalogue.MAINTENANCE_QUEUE}"
    group.add_worker("orders", orders_queues, concurrency=1, CELERY_BROKER_URL=users["orders"])
    group.add_beat(CELERY_BROKER_URL=users["relay"], WATCHDOG_INTERVAL_SECONDS="1")
    try:
        group.start_all()
        order = make_order(user)
        lost = stuck_order(user, lost="deleted")  # the watchdog's re-drive: beat -> orders worker -> relay
        for pk in (order.pk, lost.pk):
            wait_until(
                lambda pk=pk: Order.objects.filter(pk=pk, status="PROCESSED").exists(),
                timeout=30,
                message="the order to be processed by processes on least-privilege users",
            )
    finally:
        group.stop_all()


@pytest.mark.parametrize(
    ("role", "queue"),
    [
        ("relay", catalogue.BILLING_QUEUE),
        ("relay", catalogue.ORDERS_QUEUE),
        ("billing", catalogue.ORDERS_QUEUE),
        ("orders", catalogue.BILLING_QUEUE),
        ("billing", catalogue.MAINTENANCE_QUEUE),
        ("relay", catalogue.MAINTENANCE_QUEUE),
        ("billing", catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)),
        ("console", catalogue.BILLING_QUEUE),
        ("console", catalogue.ORDERS_QUEUE),
    ],
)
def test_a_process_cannot_read_a_queue_that_is_not_its_own(broker, users, role, queue):
    with Connection(users[role]) as conn, pytest.raises(AccessRefused):
        conn.default_channel.basic_get(queue)


def test_the_relay_cannot_declare_or_delete_anything(broker, users):
    with Connection(users["relay"]) as conn:
        with pytest.raises(AccessRefused):
            conn.channel().queue_delete(catalogue.BILLING_QUEUE)
        with pytest.raises(AccessRefused):
            conn.channel().queue_declare("anything", durable=True)
        # A passive check needs no permission: that is how it finds the topology.
        conn.channel().queue_declare(catalogue.BILLING_QUEUE, passive=True)
        with pytest.raises(NotFound):
            conn.channel().queue_declare("no-such-queue", passive=True)


def test_the_admin_console_replays_and_discards_on_its_own_user(broker, users, settings):
    """web's REPLAY_BROKER_URL user: it takes dead letters from a DLQ and puts them back on their queue."""
    settings.MESSAGING = {**settings.MESSAGING, "REPLAY_BROKER_URL": users["console"], "DECLARE_TOPOLOGY": False}
    to_replay, to_discard = put_dead_letter(broker), put_dead_letter(broker, queue=catalogue.ORDERS_QUEUE)
    summary, _ = dead_letters_replay(criteria=ReplayCriteria(task_ids=frozenset({to_replay})), actor="test")
    assert ([letter.task_id for letter in summary.replayed], summary.failed) == ([to_replay], [])
    summary, _ = dead_letters_discard(criteria=ReplayCriteria(task_ids=frozenset({to_discard})), actor="t", reason="r")
    assert [letter.task_id for letter in summary.discarded] == [to_discard]
    assert [message.headers["id"] for message in drain(broker, catalogue.BILLING_QUEUE)] == [to_replay]
    for queue in (*catalogue.CONSUMER_QUEUES, *map(catalogue.dead_letter_queue, catalogue.CONSUMER_QUEUES)):
        if queue != catalogue.BILLING_QUEUE:
            assert drain(broker, queue) == [], queue


def test_web_is_ready_on_the_console_user_once_consumers_are_there(broker, users):
    """web's /health/ready looks at every consumer queue on its broker user (compose: the console user)."""
    previous = app.conf.broker_url
    app.conf.broker_url = users["console"]
    try:
        # It could look (no AccessRefused): what it finds is that no worker consumes here.
        with pytest.raises(ServiceUnavailable, match="no consumer on " + ", ".join(catalogue.CONSUMER_QUEUES)):
            ConsumerQueues().run()
        with Connection(broker.as_uri(include_password=True)) as conn:
            channels = [conn.channel() for _ in catalogue.CONSUMER_QUEUES]
            for channel, queue in zip(channels, catalogue.CONSUMER_QUEUES, strict=True):
                channel.basic_consume(queue, callback=lambda message: None)
            ConsumerQueues().run()
    finally:
        app.conf.broker_url = previous


def test_the_admin_console_cannot_publish_events_or_declare_anything(broker, users):
    with Connection(users["console"]) as conn:
        channel = conn.channel()
        channel.basic_publish(
            amqp.Message(b"{}"), exchange=catalogue.EVENTS_EXCHANGE, routing_key=catalogue.BILLING_QUEUE
        )
        with pytest.raises(AccessRefused):
            channel.queue_declare(catalogue.BILLING_QUEUE, passive=True)  # the refused publish surfaces here
        with pytest.raises(AccessRefused):
            conn.channel().queue_declare("anything", durable=True)
        with pytest.raises(AccessRefused):
            conn.channel().queue_delete(catalogue.dead_letter_queue(catalogue.BILLING_QUEUE))
