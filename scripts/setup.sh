#!/usr/bin/env bash
# Create .venv with imgsearch and its test dependencies. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision must be installed as a matching pair (a mismatched torchvision breaks open_clip).
TORCH=("torch==2.14.1" "torchvision==0.29.1")
if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "${TORCH[@]}"
else
    # No NVIDIA GPU: PyTorch's CPU-only wheels (a few hundred MB instead of a 5.7 GB CUDA environment) where
    # download.pytorch.org can be reached; pip prefers their +cpu builds. Where it cannot (an offline mirror),
    # pip warns once and installs the build the other indexes have.
    .venv/bin/python -m pip install -q --retries 0 --timeout 15 \
        --extra-index-url https://download.pytorch.org/whl/cpu "${TORCH[@]}"
fi
.venv/bin/python -m pip install -q -e ".[test,ray,hf]"
# The reference implementation `imgsearch eval` is tested against (tests/test_evaluate.py): only its retrieval
# metric is used, which needs nothing beyond torch, so none of its many dependencies are installed.
.venv/bin/python -m pip install -q --no-deps "clip_benchmark==1.6.2"
# The gallery's browser tests need a Chromium; Playwright's own download is not used (offline machines).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
            || echo "setup: could not install chromium; the gallery's browser tests will be skipped" >&2
    else
        echo "setup: no chromium found; install it (apt-get install chromium) to run the gallery's browser tests" >&2
    fi
fi
