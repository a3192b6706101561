"""`[policies]` in gateway.toml: where the policy files live, how they reload, and the bounds
on what policies may start (history kept, mirrored requests in flight)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.tomlconfig import Table, keys_of


@dataclass(frozen=True)
class PoliciesConfig:
    directory: Path | None = None  # policies/*.toml; None: only the admin API sets policies
    poll_interval_s: float = 2.0  # how often the directory's files are checked for changes
    history: int = 20  # applied versions kept for GET /admin/policies and rollback
    mirror_max_in_flight: int = 64  # shadow requests beyond this are skipped, not queued
    redis_key: str = "gateway:policy"  # prefix of the Redis keys and the pub/sub channel


def parse_policies_config(t: Table, base_dir: Path) -> PoliciesConfig:
    t.expect(keys_of(PoliciesConfig))
    d = PoliciesConfig()
    directory = t.text("directory", "")
    path = Path(directory)
    config = PoliciesConfig(
        directory=(path if path.is_absolute() else base_dir / path) if directory else None,
        poll_interval_s=t.number("poll_interval_s", d.poll_interval_s, minimum=0.01),
        history=t.integer("history", d.history, minimum=2),
        mirror_max_in_flight=t.integer("mirror_max_in_flight", d.mirror_max_in_flight,
                                       minimum=1),
        redis_key=t.text("redis_key", d.redis_key),
    )
    t.finish()
    return config
