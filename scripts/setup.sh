#!/usr/bin/env bash
# Provision a fresh machine: ffmpeg from Debian, then a virtual environment with the CPU build
# of torch installed first (any other torch requirement pulls gigabytes of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: ffmpeg for decoding, chromium for the browser-client test (driven by
# Playwright with executable_path=/usr/bin/chromium; never `playwright install`).
need=()
{ command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; } || need+=(ffmpeg)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]} (Debian packages)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages into $VENV (torch 2.13.0 CPU first)"
    $PIP install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
    # The test extra includes `all` (build, train, eval, face-alignment): a development
    # machine gets everything; `pip install .` alone is just what lipsync-serve needs.
    $PIP install -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import torch, cv2, dlib, ffmpeg, matplotlib, librosa, websockets, playwright, toolkit.cli, runtime.cli" \
        || { echo "setup: the Python environment is incomplete; see the pip output above" >&2; exit 1; }
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
