"""Create one RabbitMQ user per process, with only the permissions that process needs (docker-compose's
one-shot `rabbitmq-users` service runs this before anything else connects).

Users and passwords come from the environment, so nothing secret sits in a file and changing a password is a
restart of this service: it sets every password on each run (PUT is create-or-update). It talks to the
management API with the admin user; the admin password never reaches an application container.

Permissions are (configure, write, read) regexes on resource names, exchanges and queues alike.
The `migrate` service declares the topology with the `topology` user (the system's exchanges and
queues only); the relay and the workers run with BROKER_DECLARE_TOPOLOGY=false and only check it
(a passive declare needs no permission), so:
- relay: write on ordering.events, nothing else: it publishes, it cannot consume or declare anything.
  Celery beat runs with this user too: it only publishes the periodic jobs to ordering.events.
- a worker: read on its own consumer queue (Celery does not declare it either: no_declare); write on it
  and read on celery_delayed_delivery to bind it there, and Celery's native delayed-delivery exchanges
  and queues celery_delayed_* (a retry's countdown waits there; exchange and queue share each name, so
  read on them cannot be narrower); write on ordering.events (a retry goes back through it); the
  remote-control exchanges and queues (pidbox, replies: `celery inspect ping` is its health check) and
  the task-event exchange celeryev (for flower). It cannot read the other consumer queue or any
  dead-letter queue, nor declare, bind or delete any of the system's exchanges and queues. The
  orders worker reads the maintenance queue (ordering.maintenance) too: it runs beat's periodic jobs.
- flower: task events (celeryev) and remote control only.
- console: web's user, for the admin's replay and discard (also what `replay_dead_letters` uses in
  the web container): read on the dead-letter queues (it takes their messages) and write on the
  default exchange (amq.default: a replayed message goes straight back to the queue that rejected
  it). It cannot read a consumer queue, publish to ordering.events, or declare or delete anything;
  /health/ready's passive checks of the consumer queues need no permission.

    python -m scripts.rabbitmq_users                       # management API (RABBITMQ_API, RABBITMQ_ADMIN_*)
    python -m scripts.rabbitmq_users --rabbitmqctl --vhost V --user-prefix P   # the same table via rabbitmqctl
"""

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from ordering import catalogue


def names(*resources: str) -> str:
    """An anchored regex matching exactly these names (regexes among them are marked with `re:`)."""
    parts = [r[3:] if r.startswith("re:") else re.escape(r) for r in resources]
    return "^(" + "|".join(parts) + ")$"


TOPOLOGY = (
    catalogue.EVENTS_EXCHANGE,
    catalogue.DEAD_LETTER_EXCHANGE,
    *catalogue.CONSUMER_QUEUES,
    *(catalogue.dead_letter_queue(q) for q in catalogue.CONSUMER_QUEUES),
    catalogue.MAINTENANCE_QUEUE,
)
DELAYED = "re:celery_delayed_.*"  # kombu.transport.native_delayed_delivery: celery_delayed_0..27, _delivery
CONTROL = ("celery.pidbox", "reply.celery.pidbox", r"re:.*\.reply\.celery\.pidbox")  # exchanges, reply queues
EVENTS = ("celeryev", r"re:celeryev\..*")  # the task-event exchange, flower's event queues
DEFAULT_EXCHANGE = "amq.default"  # the name permissions give the default exchange ("")


def worker(*queues: str) -> dict[str, str]:
    app = queues[0].split(".", maxsplit=1)[0]
    pidbox = rf"re:{re.escape(app)}@.*\.celery\.pidbox"  # the worker's own remote-control queue (--hostname app@%h)
    return {
        "configure": names(DELAYED, *CONTROL, pidbox, EVENTS[0]),
        "write": names(catalogue.EVENTS_EXCHANGE, *queues, DELAYED, *CONTROL, pidbox, EVENTS[0]),
        "read": names(*queues, DELAYED, *CONTROL, pidbox),
    }


# The orders worker also runs the periodic jobs beat sends (Procfile: --queues orders.events,ordering.maintenance).
WORKER_QUEUES = {
    catalogue.BILLING_QUEUE: (catalogue.BILLING_QUEUE,),
    catalogue.ORDERS_QUEUE: (catalogue.ORDERS_QUEUE, catalogue.MAINTENANCE_QUEUE),
}


PERMISSIONS: dict[str, dict[str, str]] = {
    # The migrate job's `declare_topology`: declaring a dead-lettering queue asks for read on it and
    # write on its dead-letter exchange; binding, write on the queue and read on the exchange.
    "topology": {"configure": names(*TOPOLOGY), "write": names(*TOPOLOGY), "read": names(*TOPOLOGY)},
    "relay": {"configure": "^$", "write": names(catalogue.EVENTS_EXCHANGE), "read": "^$"},
    **{queue.split(".", maxsplit=1)[0]: worker(*WORKER_QUEUES[queue]) for queue in catalogue.CONSUMER_QUEUES},
    "flower": {
        "configure": names(*CONTROL, *EVENTS),
        "write": names(*CONTROL, *EVENTS),
        "read": names(*CONTROL, *EVENTS),
    },
    "console": {
        "configure": "^$",
        "write": names(DEFAULT_EXCHANGE),
        "read": names(*(catalogue.dead_letter_queue(q) for q in catalogue.CONSUMER_QUEUES)),
    },
}


def password(role: str) -> str:
    variable = f"RABBITMQ_{role.upper()}_PASSWORD"
    value = os.environ.get(variable, "")
    if not value:
        sys.exit(f"{variable} is not set")
    return value


def via_management_api(api: str, admin: str, admin_password: str, vhost: str, prefix: str) -> None:
    token = base64.b64encode(f"{admin}:{admin_password}".encode()).decode()

    def put(path: str, body: dict) -> None:
        request = urllib.request.Request(
            api.rstrip("/") + path,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        # The broker's health check passes before its management listener may answer: retry for a while.
        for attempt in range(30):
            try:
                with urllib.request.urlopen(request, timeout=10):
                    return
            except urllib.error.HTTPError:
                raise
            except OSError:
                if attempt == 29:
                    raise
                time.sleep(2)

    quoted_vhost = urllib.parse.quote(vhost, safe="")
    for role, permissions in PERMISSIONS.items():
        user = urllib.parse.quote(prefix + role, safe="")
        put(f"/api/users/{user}", {"password": password(role), "tags": ""})
        put(f"/api/permissions/{quoted_vhost}/{user}", permissions)
        print(f"{prefix}{role}: configure {permissions['configure']}")


def via_rabbitmqctl(vhost: str, prefix: str) -> None:
    def ctl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["rabbitmqctl", "-q", *args], input=stdin, text=True, capture_output=True, check=check)

    for role, permissions in PERMISSIONS.items():
        user = prefix + role
        # The password on stdin, not on a command line other users of the host could list.
        if ctl("add_user", user, stdin=password(role) + "\n", check=False).returncode != 0:
            ctl("change_password", user, stdin=password(role) + "\n")
        ctl("set_permissions", "-p", vhost, user, permissions["configure"], permissions["write"], permissions["read"])
        print(f"{user}: permissions set on {vhost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rabbitmqctl", action="store_true", help="apply with rabbitmqctl on this host")
    parser.add_argument("--vhost", default=os.environ.get("RABBITMQ_VHOST", "/"))
    parser.add_argument("--user-prefix", default=os.environ.get("RABBITMQ_USER_PREFIX", "ordering-"))
    args = parser.parse_args()
    if args.rabbitmqctl:
        via_rabbitmqctl(args.vhost, args.user_prefix)
    else:
        via_management_api(
            os.environ.get("RABBITMQ_API", "http://rabbitmq:15672"),
            os.environ.get("RABBITMQ_ADMIN_USER", "ordering-admin"),
            password("admin"),
            args.vhost,
            args.user_prefix,
        )


if __name__ == "__main__":
    main()
