"""The image's HEALTHCHECK: exit 0 when the gateway answers /readyz with 200, 1 otherwise (slim
images have no curl). GATEWAY_HEALTHCHECK_URL names another address (a config with other ports)."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

URL = os.environ.get("GATEWAY_HEALTHCHECK_URL", "http://127.0.0.1:8080/readyz")


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=2) as reply:
            return 0 if reply.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:  # refused, timed out, or 503 (loading)
        print(f"not ready: {URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
