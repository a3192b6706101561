"""`RateLimit-Policy` and `RateLimit` reply fields as draft-ietf-httpapi-ratelimit-headers-11
writes them: Structured Field lists (RFC 9651) of items named by the policy, here the rule.

    RateLimit-Policy: "per-user";q=20;w=2, "per-tenant";q=100;w=60
    RateLimit: "per-user";r=7;t=2

`RateLimit-Policy` lists every rule that applies to the request (`q`: the burst, `w`: the
whole seconds a spent burst takes to come back; a rule charging rows says so in
`gateway-unit`, the draft's registry having no such unit). `RateLimit` reports the rule
closest to refusing, or the one that refused: `r` is what is left of its burst, `t` the
seconds until it is whole again, or, on a refusal, until this request would pass, which is
also its `Retry-After`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.ratelimit.rules import LimitRule

POLICY = "RateLimit-Policy"
STATE = "RateLimit"


def sf_string(text: str) -> str:
    """`text` as a Structured Field String: printable ASCII with `"` and `\\` escaped; any
    other character (a rule name is free text) becomes `?`."""
    chars = ("\\" + c if c in "\"\\" else c if " " <= c <= "~" else "?" for c in text)
    return '"' + "".join(chars) + '"'


def policy_item(rule: LimitRule) -> str:
    item = f"{sf_string(rule.name)};q={rule.burst};w={rule.window_s()}"
    return item if rule.cost == "request" else f'{item};gateway-unit="{rule.cost}"'


def rate_limit_headers(rules: Sequence[LimitRule], rule: LimitRule, remaining: int,
                       seconds: float) -> dict[str, str]:
    """The fields for a request `rules` applied to, `rule` the one reported: `remaining` units
    left, good for `seconds`."""
    policy = rules[0].policy_item if len(rules) == 1 else ", ".join(r.policy_item for r in rules)
    return {POLICY: policy,
            STATE: f"{rule.sf_name};r={max(0, remaining)};t={max(0, math.ceil(seconds))}"}
