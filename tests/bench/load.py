"""Open-loop HTTP load: requests due at a fixed rate, latency counted from the due time.

Request i is due at start + i / rate whatever happened to earlier ones, so a slow server does
not slow the load down and queueing shows up in the latency (no coordinated omission). Keep-alive
connections (one per sender thread, renewed when idle), pre-built bodies and http.client keep the
generator's own CPU small; it is measured like every other process. 127.0.0.1 only. Requests are
never retried: a client without its answer does not know whether the order exists.
"""

import http.client
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# A connection idle longer than this is replaced before use: gunicorn closes idle keep-alive
# connections after a few seconds, and a POST sent into a closing connection must not be lost.
IDLE_RECONNECT_SECONDS = 1.0


@dataclass
class Sent:
    index: int
    due: float
    finished: float = 0.0
    status: int = 0
    order_id: str | None = None
    error: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == 201 and self.order_id is not None

    @property
    def latency(self) -> float:
        return self.finished - self.due


class OpenLoopLoad:
    """POSTs `bodies` to `path` at `rate` per second from `connections` sender threads."""

    def __init__(
        self,
        *,
        port: int,
        path: str,
        token: str,
        bodies: list[bytes],
        rate: float,
        connections: int = 48,
        timeout: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.port = port
        self.path = path
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        self.bodies = bodies
        self.rate = rate
        self.connections = connections
        self.timeout = timeout
        self.progress = progress
        self.sent: list[Sent] = []
        self._due: queue.SimpleQueue[Sent | None] = queue.SimpleQueue()
        self._done = 0
        self._lock = threading.Lock()

    def run(self) -> list[Sent]:
        """Send every body on schedule; returns when each has an answer or an error."""
        senders = [threading.Thread(target=self._sender, daemon=True) for _ in range(self.connections)]
        for sender in senders:
            sender.start()
        start = time.monotonic() + 0.05
        for index in range(len(self.bodies)):
            due = start + index / self.rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            sent = Sent(index=index, due=due)
            self.sent.append(sent)
            self._due.put(sent)
        for _ in senders:
            self._due.put(None)
        for sender in senders:
            sender.join()
        return self.sent

    def _sender(self) -> None:
        connection: http.client.HTTPConnection | None = None
        last_used = 0.0
        while (sent := self._due.get()) is not None:
            if connection is None or time.monotonic() - last_used > IDLE_RECONNECT_SECONDS:
                if connection is not None:
                    connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                connection.request("POST", self.path, body=self.bodies[sent.index], headers=self.headers)
                response = connection.getresponse()
                payload = response.read()
                sent.status = response.status
                if response.status == 201:
                    sent.order_id = json.loads(payload)["id"]
                else:
                    sent.error = f"HTTP {response.status}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                sent.error = type(exc).__name__
                connection.close()
                connection = None
            sent.finished = time.monotonic()
            last_used = sent.finished
            with self._lock:
                self._done += 1
                done = self._done
            if self.progress and done % 200 == 0:
                self.progress(done, len(self.bodies))
        if connection is not None:
            connection.close()


def closed_loop(
    *, port: int, path: str, token: str, body: bytes, seconds: float, connections: int = 8
) -> tuple[int, int, float]:
    """As many POSTs as `connections` clients can do in `seconds`: (ok, errors, elapsed)."""
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = errors = 0
        while time.monotonic() < deadline:
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status == 201:
                    ok += 1
                else:
                    errors += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.close()
        with lock:
            counts["ok"] += ok
            counts["errors"] += errors

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["ok"], counts["errors"], time.monotonic() - started
