#!/usr/bin/env bash
# Provision a machine: ffmpeg and chromium from Debian, then a virtual environment installed
# from requirements.lock, every package at its locked version and checked against its locked
# sha256 (the CPU build of torch included). Nothing is resolved afresh on the day.
#
#   VENV=DIR            the environment to create or bring up to date (default .venv)
#   TORCH_WHEELS=DIR    a folder holding torch-2.13.0+cpu's wheel (default /opt/wheels, where
#                       these machines keep it); elsewhere set UV_EXTRA_INDEX_URL to PyTorch's
#                       CPU index instead
#   UV_CACHE_DIR, UV_NO_CACHE, PIP_NO_CACHE_DIR   as uv and pip define them (.ci/run starts
#                       with empty caches)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
LOCK=requirements.lock

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
# Installed once per version of the lock and of pyproject.toml (entry points, package list).
stamp="$VENV/.installed-$(cat $LOCK pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    start=$SECONDS
    echo "setup: installing $LOCK into $VENV"
    # uv first, itself from the lock (its version and hashes), with the venv's own pip.
    "$VENV/bin/python" - "$LOCK" > "$VENV/.uv-requirement.txt" <<'PY'
import sys
block, keep = [], False
for line in open(sys.argv[1]):
    if line[:1] not in " #\n":
        keep = line.startswith("uv==")
    if keep and not line.lstrip().startswith("#"):
        block.append(line)
sys.stdout.write("".join(block) or sys.exit("setup: requirements.lock pins no uv"))
PY
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --require-hashes --no-deps \
        -r "$VENV/.uv-requirement.txt" 2>&1 | grep -v "^WARNING: Location" || true
    links=()
    [ -d "$TORCH_WHEELS" ] && links=(--find-links "$TORCH_WHEELS")
    # The whole lock, hashes required; uv still resolves it, so a lock that misses a
    # dependency fails here rather than installing an unlocked version.
    "$VENV/bin/uv" pip install --python "$VENV/bin/python" --quiet --require-hashes "${links[@]}" -r "$LOCK"
    # The project itself, editable, and nothing else.
    "$VENV/bin/uv" pip install --python "$VENV/bin/python" --quiet --no-deps -e .
    "$VENV/bin/python" -c "import torch, cv2, dlib, ffmpeg, matplotlib, librosa, websockets, playwright, toolkit.cli, runtime.cli" \
        || { echo "setup: the Python environment is incomplete; see the output above" >&2; exit 1; }
    rm -f "$VENV"/.installed-* "$VENV/.uv-requirement.txt"
    touch "$stamp"
    echo "setup: $VENV is requirements.lock ($((SECONDS - start)) s)"
fi
