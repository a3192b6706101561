"""Key of one GCRA bucket: `rl:{<model>}:<limit name>:<limit key>=<value>` (`sub=alice`,
`header:x-api-key=...`, `client_address=10.0.0.7`; the value as `LimitKey.value` bounds it).

One script call reads and writes the buckets of every rule that applies to a request, so in
Redis Cluster those keys must hash to one slot. The hash tag is the part every such key shares
and that belongs to the bucket's own identity: the model. (The principal part differs between
a per-user and a per-tenant rule of the same request; a tag that depended on which rules apply
would put one bucket in two places.) The cost: one model's counters live on one shard.
"""

from __future__ import annotations

from gateway.ratelimit.rules import LimitRule
from gateway.types import RequestContext

# Keep components from forging separators or a different hash tag.
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A", "=": "%3D"})


def bucket_key(rule: LimitRule, context: RequestContext, model: str) -> str:
    value = rule.key_value(context)
    return (f"rl:{{{model.translate(_ESCAPES)}}}:{rule.name.translate(_ESCAPES)}:"
            f"{rule.key.translate(_ESCAPES)}={value.translate(_ESCAPES)}")
