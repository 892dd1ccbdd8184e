"""Node loss under steady load, on the cluster this package starts: the chaos run's --cluster mode, its ledger.

Orders arrive over HTTP at a steady rate while the run SIGKILLs the node that leads billing's
queue, then another node, stops the RabbitMQ app of a node its clients are connected to, and
closes every connection; each node comes back before the next fault. Nothing may be lost, charged
twice or left stuck, every event is consumed once in effect, and the API answers every order.
"""

from pathlib import Path

import pytest

from tests.chaos.cli import run_chaos
from tests.cluster import RabbitCluster

pytestmark = pytest.mark.chaos

ORDERS = 720
RATE = 8  # orders a second: 90 s of load, long enough for every fault to land inside it
KINDS = ["node_kill_leader", "node_kill", "node_stop_app", "broker_close_connections"]
RUN_TIMEOUT = 600


@pytest.mark.timeout(RUN_TIMEOUT + 180)
def test_no_order_is_lost_charged_twice_or_stuck_when_cluster_nodes_die_under_load(
    cluster: RabbitCluster, tmp_path: Path
) -> None:
    arguments = [
        "--cluster", "--cluster-name", cluster.name, "--cluster-port-base", str(cluster.port_base),
        "--orders", str(ORDERS), "--rate", str(RATE), "--kinds", ",".join(KINDS),
    ]  # fmt: skip
    output, ledger = run_chaos(arguments, tmp_path, timeout=RUN_TIMEOUT)
    orders, events = ledger["orders"], ledger["events"]
    assert ledger["violations"] == []
    assert ledger["broker"]["nodes"] == [cluster.node(n) for n in cluster.nodes]
    assert orders["accepted_201"] == ORDERS, output[-4000:]
    assert orders["lost"] == orders["double_charged"] == orders["stuck"] == 0
    assert orders["charged_but_not_processed"] == 0
    assert events["consumed_once_in_effect"] == events["deliveries_expected"] > 0
    assert ledger["unacked_left"] == 0
    assert ledger["drain"]["drained"]

    faults = ledger["faults"]
    assert set(faults["by_kind"]) == set(KINDS)
    # The load ran through every fault, and the API answered every order during each of them.
    for row in faults["timeline"]:
        assert row["error"] == "", row
        assert row["http"]["requests"] > 0, row["kind"]
        assert row["http"]["non_2xx"] == 0, row["kind"]
    [leader_loss] = [row["detail"] for row in faults["timeline"] if row["kind"] == "node_kill_leader"]
    assert leader_loss["new_leader"] != leader_loss["node"]
