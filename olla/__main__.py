"""``python -m olla version`` and ``python -m olla validate-config [PATH]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from olla import __version__
from olla.config import (
    ConfigError,
    check_endpoint_types,
    load_config,
    no_effect_warnings,
    profiles_dir,
)
from olla.profiles import load_profiles
from olla.profiles.checks import check_endpoints


def validate(path: str | None, out: TextIO) -> int:
    """Print one ``[OK]``/``[WARN]``/``[NOTE]``/``[FAIL]`` line per finding; 0 only when
    clean. Notes (keys of the Go original's configs it ignores too, documentation sections of
    profiles) are shown and do not fail the result."""
    try:
        config = load_config(path)
        profiles = load_profiles(profiles_dir(config), config.proxy.profile_filter)
        check_endpoint_types(config, (p.name for p in profiles), profiles.excluded)
    except ConfigError as e:
        out.write(f"[FAIL] {e}\nResult: FAIL\n")
        return 1
    out.write(f"[OK] loaded {config.source or 'built-in defaults'}\n")
    out.write(
        f"[OK] {len(list(profiles))} profiles: {', '.join(sorted(p.name for p in profiles))}\n"
    )
    for profile in sorted(profiles, key=lambda p: p.name):
        if profile.customised:
            out.write(f"[OK] profile {profile.name} from {profile.source}\n")
    if profiles.excluded:
        out.write(f"[OK] left out by proxy.profile_filter: {', '.join(profiles.excluded)}\n")
    endpoint_warnings, endpoint_notes = check_endpoints(config, profiles)
    # Keys with no effect fail the result like unknown keys do, and for the same reason: the
    # file asks for something (rate limits, CORS, sticky sessions) olla will not do.
    warnings = [
        *config.warnings,
        *no_effect_warnings(config),
        *profiles.warnings,
        *endpoint_warnings,
    ]
    for warning in warnings:
        out.write(f"[WARN] {warning}\n")
    for note in (*config.notes, *profiles.notes, *endpoint_notes):
        out.write(f"[NOTE] {note}\n")
    endpoints = config.discovery.endpoints
    listed = ", ".join(f"{ep.name} ({ep.type}) {ep.url}" for ep in endpoints)
    if endpoints:
        out.write(f"[OK] {len(endpoints)} endpoint(s): {listed}\n")
    else:
        out.write("[WARN] no endpoints configured: every proxied request will get 503\n")
    server = config.server
    out.write(f"[OK] listens on {server.host}:{server.port}\n")
    clean = not warnings and bool(endpoints)
    out.write("Result: PASS\n" if clean else "Result: FAIL\n")
    return 0 if clean else 1


def worker(argv: Sequence[str]) -> int:
    """``python -m olla worker TWISTD-ARGS``: how the supervisor starts a worker (``twistd``
    with these arguments, from the same Python as the supervisor, whatever its PATH holds)."""
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *argv]
    run()
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # hidden: the supervisor's workers (olla/supervisor.py)
        return worker(argv[1:])
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m olla")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the version")
    check = commands.add_parser("validate-config", help="check a config file without starting")
    check.add_argument("path", nargs="?", help="config file (default: OLLA_CONFIG_FILE / search)")
    args = parser.parse_args(argv)
    if args.command == "version":
        out.write(f"olla {__version__}\n")
        return 0
    return validate(args.path, out)


if __name__ == "__main__":
    sys.exit(main())
