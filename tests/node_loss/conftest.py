"""The RabbitMQ cluster these tests start and stop themselves (tests/cluster.py: TEST_CLUSTER, 5683-5685).

Package scope: three more RabbitMQ nodes run only while this package runs. A test that takes a
node down brings it back in `finally`; the package stops the cluster afterwards if it started it.
"""

from collections.abc import Iterator

import pytest
from kombu import Connection

from ordering.messaging.topology import declare_topology
from tests.cluster import TEST_CLUSTER, RabbitCluster
from tests.isolation import VHOST


@pytest.fixture(scope="package")
def cluster() -> Iterator[RabbitCluster]:
    started = TEST_CLUSTER.start()
    try:
        yield TEST_CLUSTER
    finally:
        if len(started) == TEST_CLUSTER.size:
            TEST_CLUSTER.stop()
        else:
            TEST_CLUSTER.start()  # running before: left running, with every node back


@pytest.fixture
def cluster_vhost(cluster: RabbitCluster) -> Iterator[str]:
    """The run's vhost on the cluster, with the system's topology declared, removed afterwards."""
    cluster.add_vhost(VHOST)
    try:
        with Connection(cluster.urls(VHOST)) as connection:
            declare_topology(connection)
        yield VHOST
    finally:
        cluster.start()  # a node a failed test left down
        cluster.delete_vhost(VHOST)
