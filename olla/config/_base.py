# -*- test-case-name: tests.test_config -*-
"""The reader toolkit every section parser uses: :class:`ConfigError` with its key path,
:class:`SectionReader`, Go durations, sizes and ``${VAR}`` interpolation.

Nothing here knows olla's sections; their dataclasses and readers live beside each other
in the other modules of :mod:`olla.config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar


class ConfigError(Exception):
    """An invalid configuration value; ``str()`` is ``"<key.path>: <reason>"``."""

    def __init__(self, reason: str, path: tuple[str | int, ...] = ()) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{format_path(path)}: {reason}" if path else reason)


def format_path(path: tuple[str | int, ...]) -> str:
    """``("discovery", "endpoints", 1, "url")`` -> ``discovery.endpoints[1].url``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


Path_ = tuple[str | int, ...]
T = TypeVar("T")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object, path: Path_) -> float:
    """Go duration syntax (``500ms``, ``30s``, ``1h30m``) to seconds; ``0`` is allowed bare."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"must be a duration like 5s, got {value!r}", path)
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ConfigError(f"must be a duration like 5s, got {value!r} (add a unit)", path)
    text = str(value).strip()
    if text in ("0", ""):
        if text == "":
            raise ConfigError("must be a duration like 5s, got ''", path)
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ConfigError(f"must be a duration like 5s, got {text!r}", path)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Seconds as a Go duration string (the inverse of :func:`parse_duration`)."""
    if seconds == 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if secs or not out:
        out += f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
    return out


def parse_size(value: object, path: Path_) -> int:
    """Bytes from an int or ``100MB`` / ``1KB`` / ``10MiB`` (binary units, as in Olla)."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"must be a size like 10MB, got {value!r}", path)
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if match is None:
        raise ConfigError(f"must be a size like 10MB, got {value!r}", path)
    unit = (match.group(2) or "").lower().replace("ib", "").replace("b", "")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def interpolate(text: str, environ: Mapping[str, str], path: Path_) -> str:
    """Expand ``${VAR}`` and ``${VAR:-fallback}``; an unset VAR with no fallback is fatal."""

    def expand(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(2)
        value = environ.get(name)
        if fallback is not None:
            return value if value else fallback
        if value is None:
            raise ConfigError(f'required environment variable "{name}" is not set', path)
        return value

    return _ENV_REF.sub(expand, text)


def read_beside(path_text: str, base_dir: Path, at: Path_) -> str:
    """The text of a file the config names; a relative name is read beside the config file."""
    file_path = Path(path_text)
    if not file_path.is_absolute():
        file_path = base_dir / file_path
    try:
        return file_path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {file_path}: {e.strerror}", at) from None


class SectionReader:
    """Reads one mapping of the YAML document, remembering which keys were used.

    Every getter takes the key and the default; the value's type is checked and errors carry
    the key path. ``finish()`` reports keys nobody asked for as warnings. ``note()`` accepts a
    key the Go original's configs carry that olla (like the Go original) does not act on:
    a compatibility note, shown but not a failure.
    """

    def __init__(
        self, data: object, path: Path_, warnings: list[str], notes: list[str] | None = None
    ) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"must be a mapping, got {type(data).__name__}", path)
        self.data: dict[Any, Any] = data
        self.path = path
        self.warnings = warnings
        self.notes: list[str] = notes if notes is not None else []
        self._used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        self._used.add(key)
        return self.data.get(key)

    def at(self, key: str) -> Path_:
        return (*self.path, key)

    def ignore(self, key: str, why: str) -> None:
        if key in self.data:
            self._used.add(key)
            self.warnings.append(f"{format_path(self.at(key))}: {why}")

    def note(self, key: str, why: str) -> None:
        """Accept ``key`` as a compatibility note (the Go original ignores it too)."""
        if key in self.data:
            self._used.add(key)
            self.notes.append(f"{format_path(self.at(key))}: {why}")

    def _get(self, key: str, default: T, convert: Callable[[Any, Path_], T]) -> T:
        self._used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        return convert(self.data[key], self.at(key))

    def text(self, key: str, default: str) -> str:
        def convert(v: Any, p: Path_) -> str:
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ConfigError(f"must be a string, got {v!r}", p)
            return str(v)

        return self._get(key, default, convert)

    def flag(self, key: str, default: bool) -> bool:
        def convert(v: Any, p: Path_) -> bool:
            if not isinstance(v, bool):
                raise ConfigError(f"must be true or false, got {v!r}", p)
            return v

        return self._get(key, default, convert)

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        def convert(v: Any, p: Path_) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"must be an integer, got {v!r}", p)
            if minimum is not None and v < minimum:
                raise ConfigError(f"must be at least {minimum}, got {v}", p)
            return v

        return self._get(key, default, convert)

    def duration(self, key: str, default: float) -> float:
        return self._get(key, default, parse_duration)

    def size(self, key: str, default: int) -> int:
        return self._get(key, default, parse_size)

    def fields(self, default: Any) -> Any:
        """A copy of the dataclass instance ``default`` with each of its plain fields read
        from this section by the field's type (``bool``, ``int``, ``str``, ``tuple[str, ...]``,
        ``float`` as a duration; ``metadata={"minimum": n}`` bounds an ``int``), so a key is
        written once, in its dataclass. Other fields keep their defaults for the caller."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(default):
            current = getattr(default, spec.name)
            if spec.type == "bool":
                values[spec.name] = self.flag(spec.name, current)
            elif spec.type == "int":
                values[spec.name] = self.integer(spec.name, current, spec.metadata.get("minimum"))
            elif spec.type == "float":
                values[spec.name] = self.duration(spec.name, current)
            elif spec.type == "str":
                values[spec.name] = self.text(spec.name, current)
            elif spec.type == "tuple[str, ...]":
                values[spec.name] = self.strings(spec.name, current)
        return dataclasses.replace(default, **values)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        def convert(v: Any, p: Path_) -> tuple[str, ...]:
            if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
                raise ConfigError(f"must be a list of strings, got {v!r}", p)
            return tuple(v)

        return self._get(key, default, convert)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}", self.at(key))
        return value

    def section(self, key: str) -> SectionReader:
        self._used.add(key)
        return SectionReader(self.data.get(key), self.at(key), self.warnings, self.notes)

    def finish(self) -> None:
        for key in self.data:
            if key not in self._used:
                self.warnings.append(f"{format_path(self.at(str(key)))}: unknown key, ignored")


def _check_cidr(value: str, path: Path_) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"must be a CIDR like 10.0.0.0/8, got {value!r}", path) from None
