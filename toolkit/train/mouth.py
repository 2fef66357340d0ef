"""Refit a package's mouth-shape model in place (``lipsync-pack train``; ``--mouth-only`` does just this).

Also how a package built before format 1.1 gets its ``mouth.safetensors``: the
file is written under a temporary name and renamed into place, then the
manifest (its ``files`` entry, ``extra.mouth`` and ``format_version`` 1.1).
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime import mouth
from runtime.package import MANIFEST, Package, read_manifest, sha256_file, validate_manifest

from ..build import mouth_entry
from ..writer import MEDIA_TYPES, write_bytes_atomic

MIN_VERSION = (1, 1)      # the format version that added mouth.safetensors


def refit(package_path: str | Path) -> mouth.MouthModel:
    """Fit the mouth-shape model on the package's training frames and store it in the package."""
    root = Path(package_path)
    model = mouth.fit(Package.open(root))
    path = root / mouth.MOUTH_FILE
    write_bytes_atomic(path, model.to_bytes())
    manifest = read_manifest(root)
    manifest["files"][mouth.MOUTH_FILE] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                                           "media_type": MEDIA_TYPES[".safetensors"]}
    manifest.setdefault("extra", {})["mouth"] = mouth_entry(model)
    major, minor = (int(v) for v in manifest["format_version"].split("."))
    if (major, minor) < MIN_VERSION:
        manifest["format_version"] = "%d.%d" % MIN_VERSION
    validate_manifest(manifest, "manifest being written")
    write_bytes_atomic(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return model
