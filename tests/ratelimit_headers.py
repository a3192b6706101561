"""Reads the `RateLimit` reply field (draft-ietf-httpapi-ratelimit-headers-11) in tests."""

from __future__ import annotations

import json
from collections.abc import Mapping


def service_limit(headers: Mapping[str, str]) -> tuple[str, int, int]:
    """(policy name, r, t) of the one item the gateway writes."""
    item, *parameters = headers["RateLimit"].split(";")
    values = dict(parameter.split("=", 1) for parameter in parameters)
    return json.loads(item), int(values["r"]), int(values["t"])


def remaining(headers: Mapping[str, str]) -> int:
    return service_limit(headers)[1]
