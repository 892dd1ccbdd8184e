"""Print where things are once web answers (make run): after the processes' start-up banners, not above them."""

import sys
import time
import urllib.request

STARTUP_SECONDS = 90


def main() -> int:
    port = sys.argv[1] if len(sys.argv) > 1 else "8000"
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health/", timeout=2):
                break
        except OSError:
            time.sleep(0.5)  # polling a server that is starting: nothing to wait on but the port
    else:
        print(f"\n  web did not answer on {base}/health/ within {STARTUP_SECONDS} s: see its lines above\n", flush=True)
        return 1
    print(
        f"""
  ------------------------------------------------------------------------------
  Ordering is up.
  API          {base}/api/orders/
  API docs     {base}/api/docs/
  Admin        {base}/admin/   (Messaging > Dead letters: replay failed orders)
  Metrics      {base}/metrics; relay :9103, billing :9101, orders :9102 (/metrics)
  Health       {base}/health/ready
  Login/token  in another terminal: make demo-user PORT={port}   (user demo / demo-password)
  Stop         Ctrl-C (warm shutdown: running tasks finish first)
  ------------------------------------------------------------------------------
""",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
