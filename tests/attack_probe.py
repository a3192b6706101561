"""The /healthz probe of tests/test_attacks.py, in a process of its own so that what it
measures is the gateway's event loop, not the test process's GIL: GETs /healthz every
INTERVAL seconds on one keep-alive connection and prints one line per probe, `ok SECONDS` or
`error WHAT` (then reconnects).

Run: python -m tests.attack_probe PORT [INTERVAL]
"""

from __future__ import annotations

import http.client
import sys
import time


def main() -> None:
    port = int(sys.argv[1])
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    connection: http.client.HTTPConnection | None = None
    while True:
        started = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/healthz")
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                raise http.client.HTTPException(f"/healthz answered {reply.status}")
            line = f"ok {time.perf_counter() - started:.6f}"
        except (OSError, http.client.HTTPException) as exc:
            line = f"error {exc!r}"
            if connection is not None:
                connection.close()
            connection = None
        try:
            print(line, flush=True)
        except BrokenPipeError:  # the test is done with us
            return
        time.sleep(interval)


if __name__ == "__main__":
    main()
