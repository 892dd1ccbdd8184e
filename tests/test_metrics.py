"""Metrics plumbing and counting: the multiprocess directory's lifecycle, counts on commit only, replays."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import transaction
from prometheus_client import REGISTRY

from ordering import catalogue
from ordering.messaging import metrics as messaging_metrics
from ordering.messaging.models import OutboxEvent
from ordering.metrics import dead_processes_mark, metrics_view, multiprocess_dir_prepare, process_mark_dead
from orders.metrics import ORDERS_CREATED
from tests.conftest import make_order
from tests.consumers import deliver


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_multiprocess_dir_is_emptied_at_start(tmp_path, monkeypatch):
    path = tmp_path / "metrics"
    (path / "leftover").mkdir(parents=True)
    (path / "counter_12345.db").write_bytes(b"an earlier run's samples")
    (path / "leftover" / "file").write_text("x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    multiprocess_dir_prepare()
    assert path.is_dir()
    assert list(path.iterdir()) == []
    # A directory that does not exist yet is created.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "new" / "metrics"))
    multiprocess_dir_prepare()
    assert (tmp_path / "new" / "metrics").is_dir()


def live_gauge_files(path: Path) -> set[str]:
    return {name for name in os.listdir(path) if name.startswith("gauge_live")}


def test_dead_pool_processes_are_marked_dead(tmp_path, monkeypatch):
    """Live gauges of an exited process stop counting; its counters and histograms stay."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead_pid = int(exited.stdout)
    for name in (f"gauge_livesum_{dead_pid}.db", f"counter_{dead_pid}.db", f"gauge_livesum_{os.getpid()}.db"):
        (tmp_path / name).write_bytes(b"")
    # Told by the process itself (Celery's worker_process_shutdown, gunicorn's child_exit) ...
    process_mark_dead(os.getpid())
    assert live_gauge_files(tmp_path) == {f"gauge_livesum_{dead_pid}.db"}
    # ... or found at the next scrape, for one that was killed without a word.
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    dead_processes_mark()
    assert live_gauge_files(tmp_path) == {f"gauge_livesum_{os.getpid()}.db"}  # this one lives
    assert (tmp_path / f"counter_{dead_pid}.db").exists()


def test_celery_worker_start_prepares_the_directory_and_exiting_pool_processes_are_marked_dead(tmp_path, monkeypatch):
    # The receivers of worker_init (main process) and worker_process_shutdown (pool process), called
    # as the signals call them: sending worker_init here would install Celery's Django fixup in the
    # test process.
    from ordering.celery import _metrics_at_worker_start, _metrics_pool_process_exits

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_1.db").write_bytes(b"")
    _metrics_at_worker_start(sender=None)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    _metrics_pool_process_exits(sender="billing@host", pid=4242, exitcode=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db(transaction=True)
def test_an_order_is_counted_when_its_transaction_commits_not_when_it_rolls_back(user):
    before = sample("ordering_orders_created_total", currency="EUR")
    with pytest.raises(RuntimeError), transaction.atomic():
        make_order(user)
        raise RuntimeError("rolled back")
    assert sample("ordering_orders_created_total", currency="EUR") == before
    with transaction.atomic():
        make_order(user)
        assert sample("ordering_orders_created_total", currency="EUR") == before  # not before the commit
    assert sample("ordering_orders_created_total", currency="EUR") == before + 1
    assert ORDERS_CREATED._labelnames == ("currency",)


def test_replay_counts_once_per_run(monkeypatch):
    before = {
        outcome: sample("ordering_dead_letter_replays_total", outcome=outcome)
        for outcome in ("replayed", "skipped", "failed")
    }
    messaging_metrics.replay_count(replayed=3, skipped=1, failed=0)
    assert sample("ordering_dead_letter_replays_total", outcome="replayed") == before["replayed"] + 3
    assert sample("ordering_dead_letter_replays_total", outcome="skipped") == before["skipped"] + 1
    assert sample("ordering_dead_letter_replays_total", outcome="failed") == before["failed"]


def test_every_metric_has_labels():
    """A metric without labels opens its file at import, before a worker has emptied its directory."""
    import orders.metrics

    for module in (messaging_metrics, orders.metrics):
        for value in vars(module).values():
            if hasattr(value, "_labelnames") and hasattr(value, "_type"):
                assert value._labelnames, value


@pytest.mark.django_db
def test_metrics_view_serves_the_scrape_time_gauges(rf):
    response = metrics_view(rf.get("/metrics"))
    assert response.status_code == 200
    text = response.content.decode()
    assert "ordering_outbox_backlog 0.0" in text
    assert 'ordering_orders_stuck{state="missing"} 0.0' in text


@pytest.mark.django_db(transaction=True)
def test_consumer_outcomes_tell_handled_from_duplicate(user):
    task = catalogue.BILLING_HANDLE_ORDER_CREATED
    before = {
        outcome: sample("ordering_consumer_messages_total", task=task, outcome=outcome)
        for outcome in ("handled", "duplicate")
    }
    order = make_order(user)
    envelope = OutboxEvent.objects.get(aggregate_id=order.id, event_type=catalogue.ORDER_CREATED).envelope()
    deliver(task, envelope, envelope)  # a copy in the same batch
    deliver(task, envelope)  # a redelivery
    assert sample("ordering_consumer_messages_total", task=task, outcome="handled") == before["handled"] + 1
    assert sample("ordering_consumer_messages_total", task=task, outcome="duplicate") == before["duplicate"] + 2
