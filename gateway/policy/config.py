"""`[policies]` in gateway.toml: where the policy files live and how they reload."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.tomlconfig import Table


@dataclass(frozen=True)
class PoliciesConfig:
    directory: Path | None = None


def parse_policies_config(t: Table, base_dir: Path) -> PoliciesConfig:
    directory = t.text("directory", "")
    t.finish()
    if not directory:
        return PoliciesConfig()
    path = Path(directory)
    return PoliciesConfig(path if path.is_absolute() else base_dir / path)
