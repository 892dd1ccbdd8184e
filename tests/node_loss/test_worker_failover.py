"""A worker that starts, or reconnects, while a node of the cluster is down consumes through the others at once."""

import pytest

from ordering import catalogue
from tests.cluster import RabbitCluster
from tests.integration.conftest import process_env
from tests.processes import ProcessGroup, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_starting_while_a_node_is_down_sets_up_through_a_running_node_without_waiting_for_the_dead_one(
    cluster: RabbitCluster, cluster_vhost: str, tmp_path
):
    dead = cluster.leader(cluster_vhost, catalogue.BILLING_QUEUE)
    group = ProcessGroup(env={**process_env(), "CELERY_BROKER_URL": cluster.urls(cluster_vhost)}, log_dir=tmp_path)
    worker = group.add_worker("billing", catalogue.BILLING_QUEUE, concurrency=1)
    cluster.kill(dead)
    try:
        worker.start()
        wait_until(
            lambda: any(q["name"] == catalogue.BILLING_QUEUE and q["consumers"] for q in cluster.queues(cluster_vhost)),
            timeout=60,
            message="the worker to consume billing's queue",
        )
        log = worker.log_text()
    finally:
        group.stop_all()
        cluster.start()

    # Celery's own step sets up delayed delivery on every node of the list in turn, and waits out
    # three retries (1 + 3 + 5 s) on a dead one before the worker consumes.
    assert "Failed to declare exchanges and queues" not in log
    assert "Retrying delayed delivery setup" not in log
    assert "native delayed delivery could not be set up" not in log
