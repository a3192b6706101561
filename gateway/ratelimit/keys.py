"""Redis key of one GCRA bucket: `rl:{<model>}:<limit name>:<claim>=<value>`.

One script call reads and writes the buckets of every rule that applies to a request, so in
Redis Cluster those keys must hash to one slot. The hash tag is the part every such key shares
and that belongs to the bucket's own identity: the model. (The principal part differs between
a per-user and a per-tenant rule of the same request; a tag that depended on which rules apply
would put one bucket in two places.) The cost: one model's counters live on one shard.
"""

from __future__ import annotations

from gateway.ratelimit.rules import LimitRule
from gateway.types import Principal

# Keep components from forging separators or a different hash tag.
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A", "=": "%3D"})


def bucket_key(rule: LimitRule, principal: Principal, model: str) -> str:
    value = rule.principal_value(principal)
    return (f"rl:{{{model.translate(_ESCAPES)}}}:{rule.name.translate(_ESCAPES)}:"
            f"{rule.key.translate(_ESCAPES)}={value.translate(_ESCAPES)}")
