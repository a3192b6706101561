"""Reading TOML config into typed values with errors that name the file, line and key.

`tomllib` keeps no positions, so `Table` finds a key's line by scanning the source for the
key's table header and assignment; good enough to point an operator at the right line. The n-th
table of an array (`[[routes]]`) is the key `routes[n]`.

A parser declares the keys a table accepts (`Table.expect`) before it reads any: an unknown key
is then the first thing reported, and "known keys here" lists them all, not just the keys read
before the error. Tables whose keys are names (`[models.demo] labels`) declare none.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A config file is unreadable or invalid; the message names file, line and key."""


class Source:
    """A parsed TOML file and its text, for locating keys."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    @classmethod
    def read(cls, path: Path) -> Source:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        return cls(path, text)

    def root(self) -> Table:
        return Table(self, (), self.data)

    def line_of(self, keys: tuple[str, ...]) -> int | None:
        """Best-effort 1-based line where the dotted key path is set."""
        if not keys:
            return None
        best: int | None = None
        header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
        current: tuple[str, ...] = ()
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> index of its last table
        for number, line in enumerate(self.lines, start=1):
            match = header.match(line)
            if match:
                current = _indexed(_parts(match.group(2)), arrays, match.group(1) == "[[")
                if best is None and len(current) == len(keys) and _leads(keys, current):
                    best = number  # the table itself, or the first of an array of tables
                continue
            assigned = re.match(r"^\s*([A-Za-z0-9_.\"'-]+)\s*=", line)
            if not assigned:
                continue
            path = current + _parts(assigned.group(1))
            if _leads(path, keys) and len(path) >= len(current) + 1:
                if path == keys:
                    return number
                best = best or number  # an inline table (or inline array) holds the key
        return best


class Table:
    """A TOML table being read: typed getters that raise `ConfigError` naming the key."""

    def __init__(self, source: Source, keys: tuple[str, ...], data: dict[str, Any]) -> None:
        self.source = source
        self.keys = keys
        self.data = data
        self._read: set[str] = set()
        self._known: frozenset[str] | None = None  # declared by `expect`

    def error(self, key: str | None, message: str) -> ConfigError:
        keys = self.keys + ((key,) if key else ())
        line = self.source.line_of(keys) or self.source.line_of(self.keys)  # missing: its table
        where = f"{self.source.path}" + (f":{line}" if line else "")
        name = ".".join(keys) or "(top level)"
        return ConfigError(f"{where}: {name}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def expect(self, keys: Iterable[str]) -> None:
        """Declare every key this table accepts and refuse any other now, before the values
        are checked: a typo `targt` is named as unknown rather than reported as a missing
        `target`."""
        self._known = frozenset(keys)
        self._refuse_unknown(self._known)

    def _get(self, key: str, kinds: tuple[type, ...], expected: str, default: Any) -> Any:
        # A key read but not declared would be refused as unknown: a parser's bug.
        assert self._known is None or key in self._known, f"{key!r} is not declared"
        self._read.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, f"missing; expected {expected}")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {expected}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def text(self, key: str, default: Any = None, *, choices: tuple[str, ...] = ()) -> Any:
        expected = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
        value = self._get(key, (str,), expected, _REQUIRED if default is None else default)
        if choices and value not in choices:
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def integer(self, key: str, default: Any = None, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
        value: int = self._get(key, (int,), "an integer", _REQUIRED if default is None else default)
        self._check_range(key, value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = None, *, minimum: float | None = None) -> float:
        value = self._get(key, (int, float), "a number", _REQUIRED if default is None else default)
        self._check_range(key, value, minimum, None)
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, (bool,), "true or false", default)
        return value

    def integers(self, key: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        value = self._get(key, (list,), "a list of integers", list(default))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.error(key, f"expected a list of integers, got {value!r}")
        return tuple(value)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, (list,), "a list of strings", [])
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def table(self, key: str) -> Table:
        value = self._get(key, (dict,), "a table", {})
        return Table(self.source, (*self.keys, key), value)

    def array(self, key: str) -> list[Table]:
        """An array of tables (`[[key]]`), each named `key[n]` in errors."""
        value = self._get(key, (list,), "an array of tables", [])
        if not all(isinstance(item, dict) for item in value):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {value!r}")
        return [Table(self.source, (*self.keys, f"{key}[{n}]"), item)
                for n, item in enumerate(value)]

    def tables(self) -> Iterator[tuple[str, Table]]:
        """Every sub-table of this table, by name (for `[models.NAME]`-style sections)."""
        for key in list(self.data):
            yield key, self.table(key)

    def finish(self) -> None:
        """Refuse keys nobody read (or, once declared, that `expect` did not name): a typo must
        not be silently ignored."""
        self._refuse_unknown(self._known if self._known is not None else self._read)

    def _refuse_unknown(self, known: Collection[str]) -> None:
        unknown = [key for key in self.data if key not in known]  # as the file has them
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            also = f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else ""
            raise self.error(unknown[0], f"unknown key (known keys here: {names}){also}")

    def _check_range(self, key: str, value: float, minimum: float | None,
                     maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected a value >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"expected a value <= {maximum}, got {value}")


_REQUIRED = object()


def keys_of(config: type, *, without: Iterable[str] = ()) -> tuple[str, ...]:
    """The field names of a config dataclass whose fields are its table's keys one for one."""
    skipped = set(without)
    return tuple(f.name for f in dataclasses.fields(config) if f.name not in skipped)


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip().strip("\"'") for p in dotted.split("."))


def _indexed(parts: tuple[str, ...], arrays: dict[tuple[str, ...], int],
             new_array_table: bool) -> tuple[str, ...]:
    """A header's key path with array indices: `[[a]]` opens `a[n+1]`; `[a.b]` under it is
    `a[n].b`."""
    path: tuple[str, ...] = ()
    for i, part in enumerate(parts):
        plain = (*path, part)
        if new_array_table and i == len(parts) - 1:
            arrays[plain] = arrays.get(plain, -1) + 1
        path = (*path, f"{part}[{arrays[plain]}]") if plain in arrays else plain
    return path


def _leads(path: tuple[str, ...], keys: tuple[str, ...]) -> bool:
    """Whether an assignment's `path` leads to `keys`; `a = [...]` leads to `a[n]`."""
    return len(path) <= len(keys) and all(
        k == p or (k.startswith(p + "[") and k.endswith("]"))
        for p, k in zip(path, keys, strict=False))
