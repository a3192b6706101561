"""A policy's sections (`[[routes]]`, `[[limits]]`) as documents carry them: which ones a
document sets, and a PATCH that replaces the sections it sets and keeps the others as written,
comments included."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from gateway.policy.loader import SECTIONS
from gateway.policy.model import Sources
from gateway.tomlconfig import ConfigError, Source

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_\-\"']+)")  # `[[routes]]`, `[routes.target]`


class CannotKeep(Exception):
    """A section of the active policy cannot be cut out of its file as written."""


def sections_set(sources: Sources) -> set[str]:
    """The sections any of the documents sets; `limits = []` sets (empties) the limits."""
    return {key for name, text in sources for key in _parse(name, text) if key in SECTIONS}


def patched(active: Sources, name: str, text: str) -> Sources:
    """One document, `name`: `text` (whose line numbers stay those of errors), then each
    section `text` does not set, cut from the active files in their order. Raises
    `ConfigError` if `text` is not TOML or sets no section, `CannotKeep` if a kept section is
    written in a form that cannot be cut (top-level `limits = [...]`, say)."""
    patch = _parse(name, text)
    replaced = {key for key in patch if key in SECTIONS}
    if not replaced:
        Source(Path(name), text).root().expect(SECTIONS)  # names a misspelt section first
        raise ConfigError(f"{name}: sets none of the sections {', '.join(SECTIONS)}; a PATCH "
                          "replaces the sections it sets (`limits = []` removes every limit)")
    expected: dict[str, Any] = dict(patch)
    parts = [text.rstrip("\n") + "\n"]
    for section in SECTIONS:
        if section in replaced:
            continue
        for file, file_text in active:
            tables = _parse(file, file_text).get(section, [])
            if not tables:
                continue
            expected.setdefault(section, []).extend(tables)
            cut = _cut(file_text, section)
            if cut is None:
                raise CannotKeep(f"{file}: its {section} are not all written as [[{section}]] "
                                 "tables; PUT the whole policy instead")
            parts.append(f"\n# {section} kept from {file}\n{cut}")
    document = "".join(parts)
    try:
        intact = tomllib.loads(document) == expected
    except tomllib.TOMLDecodeError:
        intact = False
    if not intact:  # a line in a multi-line string looked like a table header
        raise CannotKeep("the kept sections cannot be cut out of their files as written; PUT "
                         "the whole policy instead")
    return ((name, document),)


def _parse(name: str, text: str) -> dict[str, Any]:
    return Source(Path(name), text).data


def _cut(text: str, section: str) -> str | None:
    """The lines of `section`'s tables, each with the comments just above its header; None if
    the file sets keys before its first table (they might be the section's)."""
    kept: list[str] = []
    pending: list[str] = []  # comments and blank lines: they go with what follows them
    current: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        header = _HEADER.match(line)
        if header:
            current = header.group(1).strip("\"'")
            if current == section:
                kept += [*pending, line]
            pending = []
        elif not stripped or stripped.startswith("#"):
            pending.append(line)
        elif current is None:
            return None
        else:
            if current == section:
                kept += [*pending, line]
            pending = []
    return "\n".join(kept).strip("\n") + "\n"
