#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (`make lock`): every direct and transitive
# dependency of the project and of all its extras, pinned to one version each, with the sha256
# of every file that may be installed, for CPython 3.11 on x86-64 Linux, the platform the
# project is tested on.
#
# torch is the CPU build 2.13.0+cpu. PyPI has only the CUDA builds (gigabytes); the CPU wheel
# comes from PyTorch's CPU index, and on these machines from a local folder, /opt/wheels
# (TORCH_WHEELS names another). The lock names no folder or index, only the wheel's hash, so
# it installs from wherever that same file is found.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
UV=${UV:-}
if [ -z "$UV" ]; then
    if [ -x "${VENV:-.venv}/bin/uv" ]; then UV=${VENV:-.venv}/bin/uv; else UV=$(command -v uv || true); fi
fi
[ -n "$UV" ] || { echo "lock: uv not found: run \`make setup\` first (the lock installs it), or pip install uv" >&2; exit 1; }
[ -d "$TORCH_WHEELS" ] || { echo "lock: $TORCH_WHEELS does not exist: set TORCH_WHEELS to a folder holding torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" >&2; exit 1; }

tmp=$(mktemp requirements.lock.XXXXXX)
trap 'rm -f "$tmp"' EXIT
echo "torch==2.13.0+cpu" > "$tmp.torch"
trap 'rm -f "$tmp" "$tmp.torch"' EXIT
# --no-cache: the hashes are those of the files the index serves today, not of a cached copy.
"$UV" pip compile pyproject.toml --all-extras --generate-hashes --no-cache --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --find-links "$TORCH_WHEELS" --constraint "$tmp.torch" --no-emit-find-links \
    --custom-compile-command "make lock" --output-file "$tmp"
mv "$tmp" requirements.lock
echo "lock: wrote requirements.lock ($(grep -c '^[a-z0-9]' requirements.lock) packages)"
