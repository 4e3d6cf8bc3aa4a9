# -*- test-case-name: tests.test_config -*-
"""``logging:``: level, format and where the log goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from olla.config._base import ConfigError, SectionReader, format_path


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"  # debug | info | warn | error
    format: str = "json"  # json | text
    output: str = "stdout"  # stdout (or twistd's --logfile / --syslog) | file
    file: str | None = None  # absolute; required with output: file


def _logging(r: SectionReader, base_dir: Path) -> LoggingConfig:
    d = LoggingConfig()
    values = {"level": r.text("level", d.level).lower(), "format": r.text("format", d.format)}
    allowed = {"level": ("debug", "info", "warn", "warning", "error"), "format": ("json", "text")}
    for key, value in values.items():
        if value not in allowed[key]:
            r.warnings.append(
                f"{format_path(r.at(key))}: must be one of {', '.join(allowed[key])}, "
                f"got {value!r}; using {getattr(d, key)}"
            )
            values[key] = getattr(d, key)
    output = r.choice("output", d.output, ("stdout", "file"))
    result = LoggingConfig(
        level=values["level"],
        format=values["format"],
        output=output,
        file=_log_file(r, base_dir, required=output == "file"),
    )
    r.finish()
    return result


def _log_file(r: SectionReader, base_dir: Path, required: bool) -> str | None:
    """``logging.file``, relative to the config file's directory, in a directory that exists
    (checked here, so a typo fails at startup and not at the first log line)."""
    text = r.text("file", "").strip()
    if not text:
        if required:
            raise ConfigError("is required when logging.output is file", r.at("file"))
        return None
    if not required:
        r.warnings.append(f"{format_path(r.at('file'))}: ignored unless logging.output is file")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base_dir.resolve() / path
    if path.is_dir():
        raise ConfigError(f"must be a file, {str(path)!r} is a directory", r.at("file"))
    if not path.parent.is_dir():
        raise ConfigError(f"directory {str(path.parent)!r} does not exist", r.at("file"))
    return str(path)
