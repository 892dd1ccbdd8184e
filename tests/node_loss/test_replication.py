"""The topology on a three-node cluster: every queue replicated, and a dead letter outlives its leader's node."""

import pytest
from kombu import Connection

from ordering import catalogue
from tests.cluster import RabbitCluster
from tests.commands import command_output
from tests.messaging.conftest import drain
from tests.messaging.test_replay import put_dead_letter

pytestmark = pytest.mark.django_db

BILLING_DLQ = catalogue.dead_letter_queue(catalogue.BILLING_QUEUE)


def system_queues() -> set[str]:
    consumer_queues = set(catalogue.CONSUMER_QUEUES)
    return consumer_queues | {catalogue.dead_letter_queue(q) for q in consumer_queues} | {catalogue.MAINTENANCE_QUEUE}


def test_every_queue_of_the_system_and_every_dead_letter_queue_has_a_replica_on_each_node(cluster, cluster_vhost):
    queues = {q["name"]: q for q in cluster.queues(cluster_vhost) if q["name"] in system_queues()}

    assert set(queues) == system_queues()
    every_node = {cluster.node(n) for n in cluster.nodes}
    for name, queue in queues.items():
        assert queue["type"] == "quorum", name
        assert set(queue["members"]) == every_node, name


def test_a_dead_letter_outlives_its_queue_leaders_node_and_replay_reaches_it_through_another_node(
    cluster: RabbitCluster, cluster_vhost: str, settings
):
    with Connection(cluster.urls(cluster_vhost)) as connection:
        task_id = put_dead_letter(connection)
    leader = cluster.leader(cluster_vhost, BILLING_DLQ)
    # Replay connects to the dead node first: it must move on to the next one.
    dead_node_first = cluster.urls(cluster_vhost, nodes=[leader, *(n for n in cluster.nodes if n != leader)])
    settings.MESSAGING = {**settings.MESSAGING, "REPLAY_BROKER_URL": dead_node_first}

    cluster.kill(leader)
    try:
        new_leader = cluster.wait_for_leader(cluster_vhost, BILLING_DLQ, not_on=leader)
        output = command_output("replay_dead_letters", "--reset-retries")
        with Connection(cluster.url(new_leader, cluster_vhost)) as connection:
            replayed = drain(connection, catalogue.BILLING_QUEUE)
            left = drain(connection, BILLING_DLQ)
    finally:
        cluster.start()

    assert "replayed 1, skipped 0, failed 0" in output
    assert [message.headers["id"] for message in replayed] == [task_id]
    assert left == []
