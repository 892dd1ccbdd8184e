"""Prometheus metrics plumbing: the multiprocess directory, the registry a scrape reads, /metrics, exporters.

Every process that counts writes its samples to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode), so a scrape adds up all the processes of one process group: web's gunicorn
workers, or a Celery worker's pool processes. The variable must be in the process's environment
before prometheus_client is imported (it picks its storage then), which is why the launchers set it
(Procfile, docker-compose.yml, tests/processes.py) and nothing here does. Each process group has
its own directory, emptied when the group starts (gunicorn's on_starting, Celery's worker_init,
the relay's command), so web's /metrics never counts a worker's samples and no run inherits the
last one's.

Who serves what:
- web: `/metrics` (metrics_view), with the scrape-time collectors of settings.METRICS (outbox
  backlog, stuck orders: read from the database once per scrape, by web only);
- each Celery worker (main process) and the relay: an HTTP exporter on METRICS_PORT (0: none).

Metric definitions live with what they measure (ordering/messaging/metrics.py, orders/metrics.py),
every one of them with labels: prometheus_client opens a process's file when a sample is first
created, which for a metric without labels is at import, and in a Celery worker the task modules
(and so the metrics) are imported before worker_init empties the directory.
"""

import glob
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Buckets for durations from about 10 ms to a minute (latency of an order, a consumer batch).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Files of live gauges (multiprocess_mode live*), named <type>_<mode>_<pid>.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def multiprocess_dir() -> Path | None:
    """This process's multiprocess directory, or None (single process: samples stay in memory)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def multiprocess_dir_prepare() -> None:
    """At the start of a process group, before any process of it counts: an empty directory.

    Files left by an earlier run (another group start, a crash) would be added to this run's
    samples, and a live gauge of a pid that happens to be reused would never go away.
    """
    path = multiprocess_dir()
    if path is None:
        return
    if path.exists():
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    path.mkdir(parents=True, exist_ok=True)


def process_mark_dead(pid: int) -> None:
    """A process of the group exited: its live gauges stop counting (counters and histograms stay)."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, str(path))


def dead_processes_mark() -> None:
    """Mark dead every process whose live-gauge files remain: those that exited without a word (SIGKILL)."""
    path = multiprocess_dir()
    if path is None:
        return
    for name in glob.glob("gauge_live*_*.db", root_dir=path):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            process_mark_dead(int(match.group(1)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scrape_registry(collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """What one scrape reads: every process of the group (or this process alone), plus `collectors`."""
    path = multiprocess_dir()
    if path is None:
        registry = REGISTRY
    else:
        dead_processes_mark()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(path))
    return _with(registry, collectors)


class _Combined:
    """A registry's samples and some more collectors', without registering them for good."""

    def __init__(self, registry: CollectorRegistry, collectors: Iterable[Collector]) -> None:
        self.registry = registry
        self.collectors = list(collectors)

    def collect(self):
        yield from self.registry.collect()
        for collector in self.collectors:
            yield from collector.collect()


def _with(registry: CollectorRegistry, collectors: Iterable[Collector]) -> CollectorRegistry:
    collectors = list(collectors)
    if not collectors:
        return registry
    combined = CollectorRegistry(auto_describe=False)
    combined.register(_Combined(registry, collectors))
    return combined


def scrape_collectors() -> list[Collector]:
    """The collectors that read the database at scrape time (settings.METRICS["SCRAPE_COLLECTORS"]): web only."""
    return [import_string(dotted)() for dotted in settings.METRICS["SCRAPE_COLLECTORS"]]


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: web's processes and the database's scrape-time gauges, in Prometheus' text format."""
    registry = scrape_registry(scrape_collectors())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def exporter_start(*, multiprocess: bool) -> None:
    """Serve this process group's metrics on METRICS_PORT (a worker's main process, the relay); 0: none.

    `multiprocess`: the group counts in other processes than this one (a Celery worker's pool
    processes); without a multiprocess directory its exporter would show only this process's
    samples, so that is refused.
    """
    port, address = settings.METRICS["PORT"], settings.METRICS["ADDRESS"]
    if not port:
        return
    if multiprocess and multiprocess_dir() is None:
        raise ImproperlyConfigured("METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not")
    start_http_server(port, addr=address, registry=_ExporterRegistry())
    logger.info("metrics: serving on http://%s:%d/metrics", address, port)


class _ExporterRegistry:
    """A fresh view of the directory per scrape (processes come and go between scrapes)."""

    def collect(self):
        yield from scrape_registry().collect()
