"""Verified tokens, so a hot client pays one signature check per token rather than per request.

Keyed by the token's SHA-256 (the cache never holds usable credentials), bounded LRU, and each
entry expires at the token's `exp`. Only successes are cached: failures are cheap to repeat
and caching them would let junk tokens evict good ones.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from gateway.types import Principal


class VerifiedTokenCache:
    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def get(self, token: str, now: float) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        entry = self._entries.get(digest)
        if entry is None:
            return None
        principal, expires_at = entry
        if now >= expires_at:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return principal

    def put(self, token: str, principal: Principal, expires_at: float) -> None:
        digest = hashlib.sha256(token.encode()).digest()
        self._entries[digest] = (principal, expires_at)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
