"""gunicorn settings shared by every way of running web: gunicorn reads ./gunicorn.conf.py from its working
directory, which is the repository root for the Procfile (make run), the tests and the benchmark, and /app in
the image (docker-compose). Command lines keep only what differs per run: bind address, workers, timeouts.
https://gunicorn.org/reference/settings/
"""

import os

# gthread, not sync. A sync worker reads a request's headers itself, blocking, so each client that
# sends its headers slowly holds a whole worker: two such connections made /health/ time out for
# 25 s with two workers (tests/test_deployment.py reproduces it). A gthread worker waits for a
# connection's first bytes in its poller, reads headers in one of its threads and keeps accepting
# meanwhile, so a few slow clients take a few threads, not the server. It is not a bound: gunicorn
# 27 has no header-read deadline, so WEB_THREADS x workers stalled connections still fill every
# thread. Public traffic belongs behind a buffering proxy (nginx, a cloud load balancer) that only
# forwards complete requests. gthread also keeps connections alive between requests (sync closes
# each one), which saves the benchmark's clients a TCP handshake per request.
worker_class = "gthread"
# Threads are created on demand, each with its own database connection (DB_CONN_MAX_AGE): workers x
# WEB_THREADS is also the web tier's ceiling on PostgreSQL connections.
threads = int(os.environ.get("WEB_THREADS", "8"))

# No control socket. gunicorn 25.1+ opens one at a fixed path ($XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl), so two instances on one host (make run next to a test run, the chaos
# run, the benchmark's ceilings) delete each other's socket. Nothing here uses gunicornc.
control_socket_disable = True


# Prometheus multiprocess mode (ordering/metrics.py): every worker writes its samples to
# PROMETHEUS_MULTIPROC_DIR, which the launcher sets; any worker's /metrics adds them all up.
def on_starting(server) -> None:
    # In the master, before any worker imports the application: a run starts from zero.
    from ordering.metrics import multiprocess_dir_prepare

    multiprocess_dir_prepare()


def child_exit(server, worker) -> None:
    # A worker that exited (or was killed: the master reaps it) no longer counts in live gauges.
    from ordering.metrics import process_mark_dead

    process_mark_dead(worker.pid)


# Logging is ordering/settings.py's LOGGING, in the master and the workers alike (the workers load it
# again with Django): one format (LOG_FORMAT) for every line, and the access line with the request's
# method, path, status, duration, correlation id and order id as fields (ordering/logging.py). With
# a logging configuration gunicorn always writes access lines, with or without --access-logfile.
from ordering.settings import LOGGING  # noqa: E402

logconfig_dict = LOGGING
