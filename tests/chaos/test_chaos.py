"""The short chaos run inside the test suite: ~1,000 orders (a tenth cancelled), every fault kind, zero violations.

It runs the chaos CLI as a subprocess (own database, own vhost, own processes) and checks its exit
status and the key numbers of its JSON ledger. Missing services make it fail, never skip.
"""

from pathlib import Path

import pytest

from tests.chaos.cli import run_chaos
from tests.chaos.faults import FAULTS

pytestmark = pytest.mark.chaos

ORDERS = 1000
FAULT_COUNT = len(FAULTS)  # each kind once
RUN_TIMEOUT = 720


@pytest.mark.timeout(RUN_TIMEOUT + 180)
def test_short_chaos_run_keeps_every_promise(tmp_path: Path) -> None:
    output, ledger = run_chaos(["--orders", str(ORDERS), "--faults", str(FAULT_COUNT)], tmp_path, timeout=RUN_TIMEOUT)
    orders, events, letters = ledger["orders"], ledger["events"], ledger["dead_letters"]
    assert ledger["violations"] == []
    assert orders["accepted_201"] >= ORDERS * 0.98, output[-4000:]
    assert orders["lost"] == orders["double_charged"] == orders["stuck"] == 0
    assert orders["charged_but_not_processed"] == 0
    assert sum(orders["terminal_by_status"].values()) == orders["in_database"] >= orders["accepted_201"]
    assert events["published"] == events["recorded"]
    assert events["consumed_once_in_effect"] == events["deliveries_expected"] > 0
    assert letters["left"] == letters["poison_injected"] >= 2
    assert all(letter["what"] != "UNEXPECTED" for letter in letters["letters"])
    assert ledger["unacked_left"] == 0
    assert ledger["faults"]["injected"] >= 8
    assert set(ledger["faults"]["by_kind"]) == set(FAULTS)
    assert ledger["drain"]["drained"]
    # Cancellations happened at every moment, were answered, and some of them were refunds.
    cancels = ledger["cancellations"]
    assert set(cancels["by_moment"]) == {"immediate", "in_flight", "late"}
    assert cancels["answered_202"] >= cancels["requested"] * 0.5 > 0
    assert cancels["errors"] == cancels["answered_404"] == 0
    assert cancels["gateway_successful_refunds"] == orders["terminal_by_status"].get("REFUNDED", 0) > 0
    assert cancels["violations"] == {}
