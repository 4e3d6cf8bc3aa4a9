"""Aider one-shot, both ways it talks to a server, directly to the real Ollama and through olla.

``--openai-api-base .../v1 --model openai/NAME`` sends one streamed ``/v1/chat/completions``;
``OLLAMA_API_BASE=... --model ollama_chat/NAME`` sends ``/api/show`` with ``name`` and
``/api/chat`` with no Content-Type.  Either way aider must print a reply and exit 0.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.daemon import OllaDaemon
from tests.real.backend import CACHE, CHAT_MODEL, RealOllama

pytestmark = pytest.mark.e2e

AIDER = CACHE / "aider" / "venv" / "bin" / "aider"
FLAGS = [
    "--yes-always",
    "--no-git",
    "--no-check-update",
    "--no-analytics",
    "--no-show-model-warnings",
    "--no-pretty",
    "--no-fancy-input",
    "--map-tokens",
    "0",
    "--no-show-release-notes",
    "--message",
    "Say hi",
]


def run_aider(workdir: Path, mode: str, base: str) -> subprocess.CompletedProcess[str]:
    """One aider turn in an empty folder; a short reply and Ollama's own context size keep it
    quick (aider otherwise asks for num_ctx 8k+, which reloads the model).  The price-map fetch
    it tries first fails offline and is harmless."""
    workdir.mkdir(parents=True)
    model = f"openai/{CHAT_MODEL}" if mode == "openai" else f"ollama_chat/{CHAT_MODEL}"
    settings = workdir / "model-settings.yml"
    settings.write_text(
        yaml.safe_dump([{"name": model, "extra_params": {"max_tokens": 12, "num_ctx": 2048}}])
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OLLAMA_", "AIDER_"))
    }
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HOME": str(workdir)})
    args = [str(AIDER), *FLAGS, "--model", model, "--model-settings-file", str(settings)]
    if mode == "openai":
        args += ["--openai-api-base", base, "--openai-api-key", "sk-test"]
    else:
        env["OLLAMA_API_BASE"] = base
    return subprocess.run(
        args,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("mode", ["openai", "ollama"])
def test_aider_one_shot(
    real_ollama: RealOllama, olla: OllaDaemon, tmp_path: Path, mode: str
) -> None:
    """If aider makes one turn through olla, then it exits 0 with a reply and token counts, as it
    does against the backend directly."""
    if not AIDER.exists():
        pytest.skip(f"aider is not installed at {AIDER} (tests/real/install.sh)")
    prefix = "/olla/ollama/v1" if mode == "openai" else "/olla/ollama"
    direct_base = real_ollama.url + ("/v1" if mode == "openai" else "")
    direct = run_aider(tmp_path / "direct", mode, direct_base)
    proxied = run_aider(tmp_path / "proxied", mode, olla.url + prefix)
    for result in (direct, proxied):
        assert result.returncode == 0, result.stdout + result.stderr
        # aider prints its token report only once the model's reply is in; with the reply cut at
        # 12 tokens it is the "token limit" variant of that report
        assert "Output tokens: ~" in result.stdout or "Tokens:" in result.stdout, result.stdout
        assert "APIError" not in result.stdout and "Retrying" not in result.stdout, result.stdout
    requests = [e for e in olla.events if "duration_ms" in e and e.get("status") == 200]
    paths = {e.get("path") for e in requests}
    if mode == "openai":
        assert f"{prefix}/chat/completions" in paths
    else:
        assert {f"{prefix}/api/show", f"{prefix}/api/chat"} <= paths
