"""``make demo`` end to end: a real Ollama and a real llama-server behind olla, both serving
the same model; failover from either kind to the other, and a clean Ctrl-C.

The test runs ``make demo`` as a user would (in its own session, so a SIGINT to that process
group is exactly a Ctrl-C in a terminal), follows the guide it prints (its URL, its ``kill``
lines) and finally checks that no process of any session the demo created is still alive. Once
per kind of victim: a kill is final, so each direction gets a fresh demo.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.daemon import REPO, OutputLines
from tests.real.backend import CHAT_MODEL, InstallImpossible, ensure_installed

pytestmark = pytest.mark.e2e

READY = "Ctrl-C stops olla, Ollama and llama-server."
STOPPED = "[demo] stopped: nothing it started is left running"
OLLA_LINE = re.compile(r"^  olla\s+(http://127\.0\.0\.1:\d+)\s")
KILL_LINE = re.compile(r"^  (kill (\d+))\s+# stops (\S+); the next chat is served by (\S+)$")


class Demo:
    """``make demo`` in its own session, its output collected line by line."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "demo", "DEMO_PORT=0", f"DEMO_DIR={directory}"],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.out = OutputLines(self.process, "make demo")

    @property
    def lines(self) -> list[str]:
        return self.out.lines

    def wait_for(self, needle: str, timeout: float) -> None:
        self.out.wait_for(needle, timeout)

    def match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        for line in self.lines:
            found = pattern.match(line)
            if found:
                return found
        raise AssertionError(f"no line matches {pattern.pattern}:\n{self.output()}")

    def output(self) -> str:
        return self.out.output(120)


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a live process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1]), int(fields[3])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(root: int) -> set[int]:
    parents = {pid: stat[1] for pid in all_pids() if (stat := proc_stat(pid)) is not None}
    found = {root}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def running_in(sessions: Iterable[int]) -> list[str]:
    """Live processes of these sessions (a zombie has exited: only its parent's wait is due)."""
    wanted = set(sessions)
    left = []
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[2] in wanted and stat[0] != "Z":
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            left.append(f"{pid} {cmdline.decode(errors='replace')[:160]}")
    return left


def sessions_of(pids: Iterable[int]) -> set[int]:
    return {stat[2] for pid in pids if (stat := proc_stat(pid)) is not None}


def call(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=300) as reply:
        return reply.status, dict(reply.headers), reply.read()


def shared_chat(olla: str) -> tuple[int, dict[str, str], bytes]:
    """The shared model on the route both kinds serve (OpenAI's chat completions)."""
    return call(
        olla + "/olla/proxy/v1/chat/completions",
        {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    )


def chat(olla: str, stream: bool) -> tuple[int, dict[str, str], bytes]:
    return call(
        olla + "/olla/ollama/api/chat",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
            "options": {"num_predict": 8},
        },
    )


def wait_healthy(olla: str, names: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(olla + "/internal/status/endpoints", timeout=5) as r:
                seen = json.load(r)["endpoints"]
        except OSError as e:
            seen = e
        else:
            if {e["name"] for e in seen if e["status"] == "healthy"} >= names:
                return
        time.sleep(0.2)
    raise TimeoutError(f"endpoints {names} not healthy after {timeout}s: {seen}")


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (stat := proc_stat(pid)) is not None and stat[0] != "Z":
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still running after {timeout}s")
        time.sleep(0.1)


@pytest.mark.parametrize("victim_name", ["llamacpp", "ollama"])
def test_make_demo_serves_fails_over_and_stops_clean(tmp_path: Path, victim_name: str) -> None:
    """If ``make demo`` is run, then Ollama and llama-server become healthy behind olla (the
    llama-server's two slots read from it), a chat and a streamed chat through Ollama's API and
    a chat through llama.cpp's succeed, the guide's ``kill`` line stops ``victim_name`` and the
    next chats for the shared model are 200s from the other kind, and a Ctrl-C (SIGINT to its
    process group) stops every process it started: none of its sessions has a live process
    left."""
    try:
        ensure_installed(parts=("ollama", "models"))
    except InstallImpossible as why:
        pytest.skip(f"the real Ollama cannot be installed here: {why}")
    demo = Demo(tmp_path / "demo")
    sessions = {demo.process.pid}
    try:
        demo.wait_for(READY, timeout=600)
        sessions |= sessions_of(descendants(demo.process.pid))
        assert len(sessions) == 4, demo.output()  # make + runner, Ollama, llama-server, olla
        olla = demo.match(OLLA_LINE).group(1)
        kills = {m.group(3): m for line in demo.lines if (m := KILL_LINE.match(line))}
        assert set(kills) == {"llamacpp", "ollama"}, demo.output()
        kill = kills[victim_name]
        kill_command, victim, survivor = kill.group(1), int(kill.group(2)), kill.group(4)
        wait_healthy(olla, {victim_name, survivor})
        with urllib.request.urlopen(olla + "/internal/status/endpoints", timeout=5) as reply:
            rows = {e["name"]: e for e in json.load(reply)["endpoints"]}
        assert rows["llamacpp"]["max_concurrency"] == 2
        assert rows["llamacpp"]["max_concurrency_source"] == "backend"

        status, headers, body = chat(olla, stream=False)
        assert status == 200
        answer = json.loads(body)
        assert answer["message"]["role"] == "assistant" and answer["done"] is True

        status, headers, body = chat(olla, stream=True)
        assert status == 200
        assert headers["Content-Type"].startswith("application/x-ndjson")
        chunks = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert len(chunks) >= 2 and chunks[-1]["done"] is True
        assert all(not c["done"] for c in chunks[:-1])

        status, headers, body = call(
            olla + "/olla/llamacpp/v1/chat/completions",
            {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert status == 200 and headers["X-Olla-Endpoint"] == "llamacpp"
        assert json.loads(body)["choices"][0]["message"]["content"]

        subprocess.run(["sh", "-c", kill_command], check=True, timeout=10)
        wait_gone(victim)
        for _ in range(2):  # the dead one is found by the request or by a probe: 200s either way
            status, headers, body = shared_chat(olla)
            assert status == 200
            assert headers["X-Olla-Endpoint"] == survivor
            assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"

        sessions |= sessions_of(descendants(demo.process.pid))  # model runners started since
        os.killpg(demo.process.pid, signal.SIGINT)
        demo.process.wait(120)
        demo.out.join(10)
        assert any(STOPPED in line for line in demo.lines), demo.output()
        assert running_in(sessions) == []
    finally:
        for session in sessions:  # a failed test must not leave a fleet running
            try:
                os.killpg(session, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if demo.process.poll() is None:
            demo.process.wait(10)
