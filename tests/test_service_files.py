"""The service files: ``etc/olla.service``, ``Dockerfile``, ``.dockerignore``, ``compose.yaml``.

No Docker engine runs here, so the image is never built; what can be checked without one is:
every ``COPY`` source exists and survives ``.dockerignore``, a wheel builds from exactly that
build context and ships the plugin, the commands the image and the unit run parse, and the
config compose mounts loads clean with olla's own loader. ``systemd-analyze verify`` checks the
unit where systemd's tools are installed (``.ci/run`` installs them when it can).
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import yaml
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from olla.config import load_config
from olla.daemon import tap
from tests.e2e.daemon import OutputLines, daemon_env, free_port, twistd

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "etc" / "olla.service"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"


# --------------------------------------------------------------------------- helpers


def unit_entries(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values in order (systemd allows a key more than once)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    """Sources the build context must hold: every COPY that is not ``--from`` a stage."""
    sources: list[str] = []
    for word, rest in instructions:
        if word != "COPY":
            continue
        args = shlex.split(rest)
        if any(a.startswith("--from") for a in args):
            continue
        sources.extend(a for a in args[:-1] if not a.startswith("--"))
    return sources


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, ``!`` re-includes, a matching directory
    takes its contents along, ``**/`` matches any depth (none too)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        forms = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, f) for c in candidates for f in forms):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_context(into: Path) -> list[str]:
    """Copy what ``docker build .`` would send (.dockerignore applied); the files' paths.

    A directory that is ignored and that no ``!`` pattern could reach into is not walked at
    all (``.cache/`` and ``.venv/`` hold hundreds of thousands of files)."""
    patterns = dockerignore_patterns()
    negations = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    sent: list[str] = []
    for top, dirs, files in os.walk(REPO):
        base = os.path.relpath(top, REPO)
        base = "" if base == "." else base
        dirs[:] = [
            d
            for d in sorted(dirs)
            if not dockerignored(f"{base}/{d}".lstrip("/"), patterns)
            or any(n.startswith(("*", f"{base}/{d}/".lstrip("/"))) for n in negations)
        ]
        for name in sorted(files):
            relative = f"{base}/{name}".lstrip("/")
            if dockerignored(relative, patterns):
                continue
            (into / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, into / relative)
            sent.append(relative)
    return sent


# --------------------------------------------------------------------------- systemd


def test_unit_runs_the_olla_plugin_of_twistd() -> None:
    """If the unit's ExecStart named a twistd option, plugin or plugin option that does not
    exist, or a daemonising twistd, then systemd would start nothing that serves."""
    entries = unit_entries(UNIT.read_text())
    (exec_start,) = entries["Service.ExecStart"]
    binary, *args = shlex.split(exec_start)
    assert Path(binary).is_absolute() and Path(binary).name == "twistd"
    assert args[:3] == ["--nodaemon", "--pidfile=", "olla"]  # Type=simple: no fork, no pid file
    names = {maker.tapname for maker in getPlugins(IServiceMaker)}
    assert "olla" in names
    plugin_args = args[3:]
    assert plugin_args == ["--config", "/etc/olla/olla.yaml"]
    # The same arguments, on the config the install steps copy to /etc/olla/olla.yaml.
    options = tap.Options()
    options.parseOptions([plugin_args[0], str(REPO / "etc" / "olla.yaml")])
    assert options.config.server.port == 40114


def test_unit_restarts_reloads_and_drops_root() -> None:
    """If the unit ran as root, did not restart a crashed olla or reloaded with anything but
    SIGHUP to the main process, then it would not be what the README promises."""
    entries = unit_entries(UNIT.read_text())
    assert entries["Service.Type"] == ["simple"]
    assert entries["Service.Restart"] == ["on-failure"]
    assert entries["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert entries["Service.User"] not in (["root"], ["0"])
    assert entries["Service.NoNewPrivileges"] == ["yes"]
    assert entries["Service.ProtectSystem"] == ["strict"]
    assert entries["Install.WantedBy"] == ["multi-user.target"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """If ``systemd-analyze verify`` found a bad key, value or section in the unit, then it
    prints it (or fails) and so does this test.

    verify insists that ExecStart's binary exists; /opt/olla/bin/twistd exists only after the
    install steps, so the unit is checked as a copy whose ExecStart points at a stub ``twistd``
    in a temp dir, every other line unchanged.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); .ci/run adds it")
    stub = tmp_path / "bin" / "twistd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    lines = UNIT.read_text().splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    binary = shlex.split(lines[at].partition("=")[2])[0]
    lines[at] = lines[at].replace(binary, str(stub), 1)
    unit = tmp_path / "olla.service"
    unit.write_text("".join(lines))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    about_unit = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "olla.service" in line or str(tmp_path) in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert about_unit == []


# --------------------------------------------------------------------------- Docker


def test_dockerfile_copies_only_what_the_context_holds(tmp_path: Path) -> None:
    """If a COPY source were missing from the checkout or dropped by .dockerignore, or the
    context left out a file the wheel build needs, then ``docker build`` would fail: the
    context is rebuilt here by .dockerignore's rules and a wheel is built from it alone."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    context = tmp_path / "context"
    context.mkdir()
    sent = build_context(context)
    assert not any(path.startswith((".cache/", "tests/", ".venv/")) for path in sent)
    for source in copy_sources(instructions):
        assert (REPO / source).exists(), source
        assert (context / source).exists(), f"{source} is excluded by .dockerignore"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--quiet", "-w", str(tmp_path / "dist"), str(context),
        ],
        check=True,
        cwd=str(tmp_path),
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("olla-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/olla_plugin.py" in names
    assert "olla/profiles/ollama.yaml" in names
    assert "twisted/plugins/dropin.cache" not in names


def test_image_runs_twistd_olla_as_a_user_on_the_config_it_ships() -> None:
    """If the image ran as root, started something other than ``twistd -n olla`` on the config
    it copies, exposed another port or checked health elsewhere, then the container would not
    be the daemon the README describes."""
    final = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    words = dict(final)  # the last of each instruction counts, as in Docker
    assert words["FROM"].startswith("python:3.11")
    assert words["USER"] not in ("root", "0")
    entrypoint = yaml.safe_load(words["ENTRYPOINT"])  # JSON exec form
    command = yaml.safe_load(words["CMD"])
    assert entrypoint == ["twistd", "--nodaemon", "--pidfile=", "olla"]
    assert command[0] == "--config"
    copies = [shlex.split(rest) for word, rest in final if word == "COPY"]
    shipped = {args[-1]: args[0] for args in copies if not args[0].startswith("--")}
    config = REPO / shipped[command[1]]
    port = load_config(str(config)).server.port
    assert words["EXPOSE"] == str(port)
    assert "/internal/health" in words["HEALTHCHECK"]
    assert "OLLA_SERVER_HOST=0.0.0.0" in words["ENV"]


def image_env(final: list[tuple[str, str]]) -> dict[str, str]:
    """The ``ENV KEY=VALUE ...`` settings of a stage."""
    env: dict[str, str] = {}
    for word, rest in final:
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def healthcheck(final: list[tuple[str, str]], env: dict[str, str]) -> int:
    """Run the image's HEALTHCHECK command as Docker would (``sh -c``); its exit status.

    The image's ``python`` is ours here: this machine may have no ``python`` on PATH."""
    (rest,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    command = rest.partition(" CMD ")[2]
    assert command.startswith("python ")
    command = shlex.quote(sys.executable) + command.removeprefix("python")
    result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, timeout=30)
    return result.returncode


@pytest.mark.e2e
def test_image_command_serves_and_passes_its_healthcheck() -> None:
    """If the image's ENTRYPOINT and CMD are run on the config it ships (with its ENV), then
    olla starts, the HEALTHCHECK command passes against it (and fails with olla gone) and
    SIGTERM, what ``docker stop`` sends, shuts it down cleanly.

    Tests bind 127.0.0.1 only, so the image's ``OLLA_SERVER_HOST=0.0.0.0`` is overridden here
    with the same variable, on a free port."""
    final = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    words = dict(final)
    copies = [shlex.split(rest) for word, rest in final if word == "COPY"]
    shipped = {args[-1]: str(REPO / args[0]) for args in copies if not args[0].startswith("--")}
    argv = [*yaml.safe_load(words["ENTRYPOINT"]), *yaml.safe_load(words["CMD"])]
    assert argv[0] == "twistd"
    argv = [twistd(), *(shipped.get(arg, arg) for arg in argv[1:])]
    port = str(free_port())
    env = daemon_env({**image_env(final), "OLLA_SERVER_HOST": "127.0.0.1"})
    env["OLLA_SERVER_PORT"] = port
    process = subprocess.Popen(
        argv, env=env, cwd="/tmp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = OutputLines(process, "olla")
    try:
        lines.wait_for("listening on", timeout=30)
        assert healthcheck(final, env) == 0, lines.output()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        lines.join(5)
        output = lines.output(last=10_000)
        # twistd shuts down cleanly, then re-raises the signal so its status says why it ended
        # (Docker reports 143; systemd counts SIGTERM as a clean exit).
        assert process.returncode in (0, -signal.SIGTERM), output
        assert "Server Shut Down." in output
        assert healthcheck(final, env) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_compose_puts_olla_in_front_of_an_ollama_service() -> None:
    """If compose.yaml did not parse, olla's mounted config failed olla's own validation or
    pointed at something other than the compose Ollama service, then ``docker compose up``
    would give a proxy with nothing behind it."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert services["ollama"]["image"].startswith("ollama/ollama")
    olla = services["olla"]
    assert olla["build"] == "."
    assert "ollama" in olla["depends_on"]
    mounts = dict(v.split(":")[:2] for v in olla["volumes"])
    reverse = {inside: outside for outside, inside in mounts.items()}
    config_file = (REPO / reverse["/etc/olla/olla.yaml"]).resolve()
    validated = subprocess.run(
        [sys.executable, "-m", "olla", "validate-config", str(config_file)],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Result: PASS" in validated.stdout
    config = load_config(str(config_file))
    assert [ep.url for ep in config.discovery.endpoints] == ["http://ollama:11434"]
    published = [p.rsplit(":", 1)[-1] for p in olla["ports"]]
    assert published == [str(config.server.port)]
    assert config.server.host == "0.0.0.0"


HA_COMPOSE = REPO / "etc" / "compose.ha.yaml"


def test_ha_compose_two_instances_one_store_one_port() -> None:
    """If the HA example did not parse, its instances did not share one config with
    ``state.backend: redis`` at the compose Valkey, or its front did not send one port to both
    instances, then ``docker compose -f etc/compose.ha.yaml up`` would not be highly available."""
    compose = yaml.safe_load(HA_COMPOSE.read_text())
    services = compose["services"]
    assert services["valkey"]["image"].startswith("valkey/valkey")
    instances = [name for name, service in services.items() if name.startswith("olla-")]
    assert len(instances) == 2
    configs = set()
    for name in instances:
        mounts = dict(v.split(":")[:2] for v in services[name]["volumes"])
        reverse = {inside: outside for outside, inside in mounts.items()}
        configs.add((HA_COMPOSE.parent / reverse["/etc/olla/olla.yaml"]).resolve())
        assert "valkey" in services[name]["depends_on"]
        assert "ports" not in services[name]  # reached through the front only
    assert len(configs) == 1
    config = load_config(str(configs.pop()))
    assert config.state.backend == "redis"
    assert config.state.url.startswith("redis://valkey:")
    assert config.proxy.sticky_sessions.enabled
    front = services["front"]
    assert [p.rsplit(":", 1)[-1] for p in front["ports"]] == [str(config.server.port)]
    mounts = dict(v.split(":")[:2] for v in front["volumes"])
    haproxy = (HA_COMPOSE.parent / next(iter(mounts))).read_text()
    for name in instances:
        assert f"server {name} {name}:{config.server.port}" in haproxy
    assert "/internal/health" in haproxy
    assert "forwardfor" in haproxy and config.server.rate_limits.trust_proxy_headers


def test_dockerignore_rules_as_docker_reads_them() -> None:
    """If the .dockerignore matcher of these tests misread Docker's rules, then the context
    test above would prove nothing: last match wins, ``!`` re-includes, ``**/`` any depth."""
    patterns = ["*", "!olla", "**/__pycache__", "!keep/**/x.py"]
    assert dockerignored(".cache/real/big", patterns)
    assert not dockerignored("olla/app.py", patterns)
    assert dockerignored("olla/__pycache__/app.pyc", patterns)
    assert dockerignored("__pycache__/a.pyc", patterns)
    assert not dockerignored("keep/a/b/x.py", patterns)
