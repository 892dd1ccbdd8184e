"""Settings for the ordering system: one module, every value read from the environment.

Each section names the variables it reads; README.md lists them all with their defaults.
"""

import os
import random
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# --- Core Django -------------------------------------------------------------------------------
# DEBUG, SECRET_KEY, ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS.
# SECRET_KEY has a development default only while DEBUG is on. Without one, web refuses to start
# (ordering/wsgi.py) rather than answer 500 to every request that needs it; commands that need no
# key (makemigrations, check) still run, and Django refuses anything that would use an empty one.
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key" if DEBUG else "")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS (behind a TLS-terminating proxy) ----------------------------------------------------
# SECURE_SSL_REDIRECT, SECURE_HSTS_SECONDS, SECURE_HSTS_INCLUDE_SUBDOMAINS, SECURE_HSTS_PRELOAD,
# SESSION_COOKIE_SECURE, CSRF_COOKIE_SECURE, SECURE_PROXY_SSL_HEADER.
# Secure by default with DEBUG off (what `manage.py check --deploy` asks for), relaxed with DEBUG on
# (`make run` serves plain HTTP on 127.0.0.1). Processes that serve plain HTTP with DEBUG off (the
# tests, the chaos run, the benchmark) set SECURE_SSL_REDIRECT=false explicitly.
# https://docs.djangoproject.com/en/stable/ref/middleware/#module-django.middleware.security
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Health checks of containers and load balancers probe over plain HTTP: /health/ never redirects.
SECURE_REDIRECT_EXEMPT = [r"^health/"]
# HSTS is a promise browsers keep for SECURE_HSTS_SECONDS, for every subdomain with
# INCLUDE_SUBDOMAINS and, with PRELOAD, consent to be built into browsers: roll out with a short
# SECURE_HSTS_SECONDS and PRELOAD=false first on a domain whose subdomains are not all on HTTPS yet.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# Behind a proxy that terminates TLS, e.g. SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https:
# without it every request looks like plain HTTP and SECURE_SSL_REDIRECT loops. Set it only when
# the proxy overwrites that header on every request, or any client can claim HTTPS.
SECURE_PROXY_SSL_HEADER = env.tuple("SECURE_PROXY_SSL_HEADER", default=None) or None
if SECURE_PROXY_SSL_HEADER is not None and len(SECURE_PROXY_SSL_HEADER) != 2:
    raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER is '<header>,<value>', e.g. HTTP_X_FORWARDED_PROTO,https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "log_request_id",
    "health_check",
    "axes",
    "ordering.messaging",
    "ordering.idempotency",
    "orders",
    "billing",
    "fraud",
]

MIDDLEWARE = [
    "ordering.middleware.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "ordering.urls"
WSGI_APPLICATION = "ordering.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------
# DATABASE_URL, e.g. postgres://user:pass@host:5432/ordering. CONN_MAX_AGE keeps web connections
# open between requests; health checks drop connections that died with a database restart.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/ordering"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Server-side parameters, and statements PostgreSQL prepares once a connection has run them a
# few times: the hot paths repeat a handful of statements, which then skip parsing and planning.
# (Behind PgBouncer in transaction mode this needs its prepared-statement support, 1.21+.)
DATABASES["default"].setdefault("OPTIONS", {}).update(
    server_side_binding=env.bool("DB_SERVER_SIDE_BINDING", default=True),
    prepare_threshold=env.int("DB_PREPARE_THRESHOLD", default=5),
)
# DB_DISABLE_SERVER_SIDE_CURSORS=true behind a pooler in transaction mode (PgBouncer): it may run each
# transaction of one Django connection on another server connection, and a server-side cursor
# (QuerySet.iterator()) lives on the server connection it was opened on, so its next fetch would
# find none. Django then fetches such results client-side. The relay's LISTEN has the same problem
# and its own setting (DATABASE_LISTEN_URL, MESSAGING below).
# https://docs.djangoproject.com/en/stable/ref/databases/#transaction-pooling-server-side-cursors
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DB_DISABLE_SERVER_SIDE_CURSORS", default=False)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- REST API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "ordering.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_PARSER_CLASSES": [
        "ordering.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # drf-spectacular's, with the error responses every operation shares (ordering/schema.py).
    "DEFAULT_SCHEMA_CLASS": "ordering.schema.AutoSchema",
    "EXCEPTION_HANDLER": "ordering.api.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Ordering API",
    "DESCRIPTION": "Create orders and follow them through fraud checks and billing.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from this project's static files, not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- API protection: idempotency keys, throttling, login lockout -------------------------------
# CACHE_URL, CACHE_KEY_PREFIX, IDEMPOTENCY_KEY_TTL_SECONDS, API_THROTTLE_USER_RATE,
# API_THROTTLE_CREATE_RATE, API_THROTTLE_ANON_RATE, TRUSTED_PROXY_COUNT, AXES_FAILURE_LIMIT,
# AXES_COOLOFF_MINUTES. README.md, "Security", says what each protects against.

# Idempotency-Key on POST /api/orders/ (ordering/idempotency): how long a key and its response are
# kept; `manage.py purge_idempotency_keys` deletes expired ones (schedule it).
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=24 * 60 * 60)

# The throttles' counters, shared by every web process. Short socket timeouts: an unreachable
# Redis costs a request a fraction of a second, then the throttle lets it through
# (ordering/throttling.py). https://docs.djangoproject.com/en/stable/topics/cache/#redis
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env.str("CACHE_URL", default="redis://127.0.0.1:6379/0"),
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="ordering"),
        "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.25},
    },
}


def _throttle_rate(name: str, default: str) -> str | None:
    """A DRF rate ("120/min"); "none" turns that throttle off (the benchmark and chaos runs do)."""
    rate = env.str(name, default=default)
    return None if rate.strip().lower() in {"", "none", "off"} else rate


# Per client (user id; anonymous: IP address), in the shared cache. A throttled request gets 429
# with Retry-After. The create rate applies on top of the user rate. The defaults leave room for a
# busy integration; the benchmark and the chaos run, which send hundreds of orders a second from
# one token, turn both off in the environment of their processes.
# https://www.django-rest-framework.org/api-guide/throttling/
REST_FRAMEWORK |= {
    "DEFAULT_THROTTLE_CLASSES": ["ordering.throttling.UserRateThrottle", "ordering.throttling.AnonRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": _throttle_rate("API_THROTTLE_USER_RATE", "600/min"),
        "create": _throttle_rate("API_THROTTLE_CREATE_RATE", "120/min"),
        "anon": _throttle_rate("API_THROTTLE_ANON_RATE", "60/min"),
    },
}

# Reverse proxies in front of the web processes that append the client's address to
# X-Forwarded-For. 0 (no proxy): only REMOTE_ADDR is trusted, and a client cannot pick its own
# address with a forged header. N: the address N hops from the right of X-Forwarded-For.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
REST_FRAMEWORK["NUM_PROXIES"] = TRUSTED_PROXY_COUNT

# django-axes: a (username, IP address) pair that fails AXES_FAILURE_LIMIT logins in a row is locked
# out for AXES_COOLOFF_MINUTES (429) on the admin and the browsable API's login; a success resets
# the count. Failures are kept in the database (the admin lists them; `manage.py axes_reset`
# unlocks). API tokens never go through Django's authenticate(): axes does not see or block them.
# https://django-axes.readthedocs.io/en/latest/4_configuration.html
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_RESET_ON_SUCCESS = True
AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR") if TRUSTED_PROXY_COUNT else ("REMOTE_ADDR",)
AXES_IPWARE_PROXY_COUNT = TRUSTED_PROXY_COUNT or None
AXES_IPWARE_PROXY_ORDER = "right-most"

# --- Correlation ids ---------------------------------------------------------------------------
# django-log-request-id takes the correlation id from the X-Correlation-ID request header (or
# makes one), returns it, and puts it on every log line; the outbox copies it into each event
# envelope and consumers restore it, so one id follows an order through every process.
LOG_REQUEST_ID_HEADER = "HTTP_X_CORRELATION_ID"
GENERATE_REQUEST_ID_IF_NOT_IN_HEADER = True
REQUEST_ID_RESPONSE_HEADER = "X-Correlation-ID"
NO_REQUEST_ID = "-"

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# json: one JSON object per line on stdout, for log collectors (production); text: readable lines
# (`make run`). Every line carries the correlation id, and the event id and order id while a
# request or event about an order is handled, as fields (ordering/logging.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT is json or text, not {LOG_FORMAT!r}")
# The one logging configuration of every process: Django's, the Celery workers' (ordering/celery.py
# keeps Celery from adding its own) and gunicorn's (gunicorn.conf.py hands it this dict).
LOGGING_CONFIG = "ordering.logging.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "ordering.logging.ContextFilter"},
        "access": {"()": "ordering.logging.AccessLogFilter", "correlation_id_header": REQUEST_ID_RESPONSE_HEADER},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        },
        "text": {
            "format": "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s %(message)s",
            "defaults": {"correlation_id": NO_REQUEST_ID},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Django's own console handler (DEBUG only) would print its lines a second time.
        "django": {"handlers": [], "level": LOG_LEVEL},
        # gunicorn's loggers (which it makes not propagate), through the same handler; access
        # lines with their values as fields.
        "gunicorn.error": {"handlers": [], "propagate": True},
        "gunicorn.access": {"handlers": [], "propagate": True, "filters": ["access"]},
    },
}

# --- Celery and RabbitMQ -----------------------------------------------------------------------
# All Celery settings live here with the CELERY_ prefix (ordering/celery.py loads them).
# Topology (exchanges, queues, dead-letter exchange) is in ordering/messaging/topology.py.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
# A RabbitMQ cluster is given as its nodes' URLs separated by ';' (kombu's failover list): a client
# connects to one node and moves on to the next when that one fails. Each process takes the list in
# an order of its own, so the clients spread over the nodes instead of all starting on the first.
_BROKER_NODES = env.str("CELERY_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//").split(";")
CELERY_BROKER_URL = ";".join(random.sample(_BROKER_NODES, len(_BROKER_NODES)))
# Celery takes CELERY_BROKER_URL from the environment before its settings: the process's own order
# goes back there, or every process would start on the first node listed.
if "CELERY_BROKER_URL" in os.environ:
    os.environ["CELERY_BROKER_URL"] = CELERY_BROKER_URL
# Publisher confirms: a publish returns only once RabbitMQ has taken responsibility for the message.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker keeps trying to reach the broker for as long as it is away (Celery gives up after 100
# attempts and exits by default; at a few seconds an attempt that would be a few minutes).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_HEARTBEAT = env.int("CELERY_BROKER_HEARTBEAT", default=30)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_DELIVERY_MODE = "persistent"
# Every task is routed explicitly (ordering/catalogue.py); a typo must fail, not create a queue.
CELERY_TASK_CREATE_MISSING_QUEUES = False
# At-least-once consumption: ack after the task finished, never before.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
CELERY_TASK_ACKS_LATE = True
# A task that finally failed is rejected (requeue=False) so RabbitMQ dead-letters it. Celery's
# default acks, i.e. deletes, it. The same for a hard time limit: the message is requeued.
CELERY_TASK_ACKS_ON_FAILURE = False
CELERY_TASK_ACKS_ON_TIMEOUT = False
# A killed pool process requeues its message; the quorum queue's x-delivery-limit bounds the loop
# and dead-letters a message that keeps killing workers.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Consumers take every waiting message of a pool process's turn as one batch (up to
# CONSUMER_BATCH_MAX, ordering/messaging/batching.py): each pool process may hold one batch.
CONSUMER_BATCH_MAX = env.int("CONSUMER_BATCH_MAX", default=32)
CELERY_WORKER_PREFETCH_MULTIPLIER = CONSUMER_BATCH_MAX
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# No CELERY_TASK_*_TIME_LIMIT: the consumers' time limits are per batch, kept by the pool process
# that runs it (MESSAGING below). Celery would also give every pool job its own timers, run by
# the worker's event loop; that loop stops while the worker reconnects to a lost broker, and
# after a long outage those timers fire late at pool processes done with their batch.
# Worker log lines go through LOGGING above, so they carry the correlation id too.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
# The worker's consumer, with reconnection intervals of our choosing (ordering/celery.py).
CELERY_WORKER_CONSUMER = "ordering.celery:Consumer"
# Results: successes are not stored (no extra write on the happy path); failures are, with the
# traceback, task arguments and worker, in django-celery-results: the dead-letter details.
# django-celery-results ("django-db"), through a connection that a database failure inside the
# task has not left broken (ordering/messaging/results.py).
CELERY_RESULT_BACKEND = "ordering.messaging.results:ResultBackend"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED = True
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = None

# --- Messaging (outbox relay, consumers, dead letters) -----------------------------------------
MESSAGING = {
    # Retries of transient errors: exponential backoff with full jitter, capped, bounded.
    "RETRY_MAX": env.int("CONSUMER_RETRY_MAX", default=5),
    "RETRY_BACKOFF_SECONDS": env.int("CONSUMER_RETRY_BACKOFF_SECONDS", default=1),
    "RETRY_BACKOFF_MAX_SECONDS": env.int("CONSUMER_RETRY_BACKOFF_MAX_SECONDS", default=60),
    "RETRY_JITTER": env.bool("CONSUMER_RETRY_JITTER", default=True),
    # Deliveries of one message before RabbitMQ dead-letters it (quorum queue x-delivery-limit):
    # the guard against a message that kills its worker every time.
    "DELIVERY_LIMIT": env.int("QUEUE_DELIVERY_LIMIT", default=10),
    # Replicas of each quorum queue (x-quorum-initial-group-size) on a cluster; a single node holds
    # the one replica there can be. 3 survives the loss of one node (a majority of 3 is 2). 0: the
    # broker's default. RabbitMQ compares it on every declaration, so a queue declared with
    # another value must be re-created for a new one to apply (README, "Scaling out").
    "QUORUM_INITIAL_GROUP_SIZE": env.int("QUORUM_INITIAL_GROUP_SIZE", default=3),
    # Messages one pool process handles in one batch, at most (one transaction, one commit).
    "CONSUMER_BATCH_MAX": CONSUMER_BATCH_MAX,
    # Per batch: past the soft limit SoftTimeLimitExceeded is raised in it (what it had not
    # finished is retried); past the hard limit its pool process exits and the batch is requeued.
    "BATCH_SOFT_TIME_LIMIT_SECONDS": env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=30),
    "BATCH_TIME_LIMIT_SECONDS": env.int("CELERY_TASK_TIME_LIMIT", default=60),
    "RELAY_BATCH_SIZE": env.int("RELAY_BATCH_SIZE", default=100),
    "RELAY_SWEEP_SECONDS": env.float("RELAY_SWEEP_SECONDS", default=2.0),
    # Under load (over 40 batches a second), the shortest time between two batches: commits
    # gather into one batch meanwhile. Below that, an event is published as soon as committed.
    "RELAY_COALESCE_MS": env.float("RELAY_COALESCE_MS", default=15),
    "RELAY_CONFIRM_TIMEOUT_SECONDS": env.float("RELAY_CONFIRM_TIMEOUT_SECONDS", default=10.0),
    "RELAY_ERROR_BACKOFF_MAX_SECONDS": env.float("RELAY_ERROR_BACKOFF_MAX_SECONDS", default=2.0),
    # Longest wait between a worker's attempts to reach a broker that went away.
    "BROKER_RECONNECT_MAX_SECONDS": env.float("BROKER_RECONNECT_MAX_SECONDS", default=2.0),
    "REPLAY_MAX_REPLAYS": env.int("REPLAY_MAX_REPLAYS", default=3),
    # Broker URL of replay and discard (replay_dead_letters, the admin): a user that may read the
    # DLQs and publish to the default exchange (scripts/rabbitmq_users.py, role "console").
    # Empty: CELERY_BROKER_URL.
    "REPLAY_BROKER_URL": env.str("REPLAY_BROKER_URL", default=""),
    # The relay and the workers declare the topology on every connection; with least-privilege
    # broker users (docker-compose) they only check it, and `manage.py declare_topology` declares it.
    "DECLARE_TOPOLOGY": env.bool("BROKER_DECLARE_TOPOLOGY", default=True),
    # /health/ready fails while a committed event has waited longer than this for the relay.
    "READY_OUTBOX_LAG_SECONDS": env.int("READY_OUTBOX_LAG_SECONDS", default=60),
    # If set, the relay touches this file on every loop: a liveness probe for containers.
    "RELAY_HEARTBEAT_FILE": env.str("RELAY_HEARTBEAT_FILE", default=""),
    # The database of the relay's LISTEN connection (its wake-up on every outbox commit), as
    # DATABASES entries are: DATABASE_LISTEN_URL, parsed like DATABASE_URL. None: the default
    # database's. LISTEN subscribes the server connection it runs on, and a pooler in transaction
    # mode returns that connection to its pool right after: the relay would never hear a NOTIFY
    # (only its sweep would publish). Behind one, point this at PostgreSQL itself.
    "LISTEN_DATABASE": env.db_url("DATABASE_LISTEN_URL") if env.str("DATABASE_LISTEN_URL", default="") else None,
}

# --- Metrics (Prometheus) ----------------------------------------------------------------------
# PROMETHEUS_MULTIPROC_DIR, METRICS_PORT, METRICS_ADDRESS.
# PROMETHEUS_MULTIPROC_DIR is read by prometheus_client itself, when it is imported: the launcher
# sets it (Procfile, docker-compose.yml), one directory per process group (web, the relay, each
# worker), emptied when the group starts (ordering/metrics.py). Unset, a process keeps its samples
# in memory (fine for one process, wrong for gunicorn's workers or Celery's pool processes).
# Web serves GET /metrics; a worker's main process and the relay serve theirs on METRICS_PORT (0:
# no exporter), on METRICS_ADDRESS (in a container 0.0.0.0, published on 127.0.0.1 only).
METRICS = {
    "PORT": env.int("METRICS_PORT", default=0),
    "ADDRESS": env.str("METRICS_ADDRESS", default="127.0.0.1"),
    # Read from the database at scrape time, by web's /metrics only (so counted once, not per
    # process): outbox backlog and oldest event's age, stuck orders (WATCHDOG below).
    "SCRAPE_COLLECTORS": ["ordering.messaging.metrics.OutboxCollector", "orders.metrics.StuckOrdersCollector"],
}
# Prometheus scrapes web directly over plain HTTP, never through the public proxy.
SECURE_REDIRECT_EXEMPT += [r"^metrics$"]

# --- Watchdog, retention and their schedule (Celery beat) --------------------------------------
# WATCHDOG_STUCK_AFTER_SECONDS, WATCHDOG_IN_FLIGHT_SECONDS, WATCHDOG_INTERVAL_SECONDS,
# WATCHDOG_MAX_ORDERS, RETENTION_OUTBOX_DAYS, RETENTION_INBOX_DAYS, RETENTION_BATCH_SIZE,
# RETENTION_MAX_BATCHES, RETENTION_INTERVAL_SECONDS, IDEMPOTENCY_PURGE_INTERVAL_SECONDS, CELERY_BEAT_SCHEDULE_FILENAME.
WATCHDOG = {
    # An order PENDING longer than this is stuck: the watchdog, check_pipeline and the stuck-orders
    # metric look at it.
    "STUCK_AFTER_SECONDS": env.int("WATCHDOG_STUCK_AFTER_SECONDS", default=300),
    # An event published, or a task retried, this recently is still on its way (in flight); past
    # it, an event nobody consumed counts as missing and is re-driven. Longer than the longest
    # retry backoff (CONSUMER_RETRY_BACKOFF_MAX_SECONDS), so a retry waiting in the broker is not
    # taken for a loss; a re-drive of a message that was only slow is a duplicate the inbox drops.
    "IN_FLIGHT_SECONDS": env.int("WATCHDOG_IN_FLIGHT_SECONDS", default=600),
    # Stuck orders looked at per run, oldest first (the rest wait for the next run).
    "MAX_ORDERS": env.int("WATCHDOG_MAX_ORDERS", default=500),
}
RETENTION = {
    # Published outbox rows: the relay is done with them; kept a while for the order's history.
    "OUTBOX_DAYS": env.float("RETENTION_OUTBOX_DAYS", default=7),
    # Inbox rows (ProcessedEvent): the consumers' memory of what they handled. Must outlast every
    # copy of a message that can still arrive: replay refuses dead letters older than this. Retry
    # records and the failure records of dead letters since handled go at the same age, never
    # after their inbox rows (a failure is "resolved" by its inbox row: without it, it would read
    # as unresolved again).
    "INBOX_DAYS": env.float("RETENTION_INBOX_DAYS", default=30),
    # Rows per DELETE (one short transaction each), and batches per table and run at most.
    "BATCH_SIZE": env.int("RETENTION_BATCH_SIZE", default=1000),
    "MAX_BATCHES": env.int("RETENTION_MAX_BATCHES", default=100),
}

# One beat process sends the periodic jobs to the maintenance queue (ordering/catalogue.py). Only
# one may run: each beat sends every job on its own schedule, so two would run each job twice.
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
CELERY_BEAT_SCHEDULE = {
    "redrive-stuck-orders": {
        "task": "orders.redrive_stuck_orders",
        "schedule": env.float("WATCHDOG_INTERVAL_SECONDS", default=60),
    },
    "purge-messaging": {
        "task": "messaging.purge_expired",
        "schedule": env.float("RETENTION_INTERVAL_SECONDS", default=3600),
    },
    "purge-idempotency-keys": {
        "task": "idempotency.purge_expired_keys",
        "schedule": env.float("IDEMPOTENCY_PURGE_INTERVAL_SECONDS", default=3600),
    },
}
# Beat's record of the last runs: a temporary file (lost on restart, beat then runs each job once
# early), never in the source tree or a read-only image.
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(Path(tempfile.gettempdir()) / "ordering-celerybeat-schedule")
)

# --- Domain ------------------------------------------------------------------------------------
ORDER_DEFAULT_CURRENCY = env.str("ORDER_DEFAULT_CURRENCY", default="EUR")
ORDER_CURRENCIES = env.list("ORDER_CURRENCIES", default=["EUR", "USD", "GBP"])
# The largest total (price x quantity) an order may have; the API refuses a larger order before
# anything is written. Every amount column (payments, fraud checks, simulated charges: numeric(14,
# 2), and the orders table's check constraint) holds up to ORDER_AMOUNT_CEILING, so the setting
# may not exceed it.
ORDER_AMOUNT_CEILING = Decimal("999999999999.99")
ORDER_AMOUNT_MAX = Decimal(env.str("ORDER_AMOUNT_MAX", default="1000000.00"))
if not Decimal("0.01") <= ORDER_AMOUNT_MAX <= ORDER_AMOUNT_CEILING:
    raise ImproperlyConfigured(f"ORDER_AMOUNT_MAX must be between 0.01 and {ORDER_AMOUNT_CEILING}")

FRAUD_AMOUNT_LIMIT = Decimal(env.str("FRAUD_AMOUNT_LIMIT", default="10000.00"))
FRAUD_VELOCITY_MAX_ORDERS = env.int("FRAUD_VELOCITY_MAX_ORDERS", default=5)
FRAUD_VELOCITY_WINDOW_MINUTES = env.int("FRAUD_VELOCITY_WINDOW_MINUTES", default=10)

# The gateway billing charges through: a dotted path to a PaymentGateway class.
PAYMENT_GATEWAY = env.str("PAYMENT_GATEWAY", default="billing.gateways.SimulatedGateway")
# Simulated gateway behaviour: latency per charge, and charges above this amount are declined.
SIMULATED_GATEWAY_LATENCY_MS = env.int("SIMULATED_GATEWAY_LATENCY_MS", default=0)
SIMULATED_GATEWAY_DECLINE_ABOVE = Decimal(env.str("SIMULATED_GATEWAY_DECLINE_ABOVE", default="5000.00"))
