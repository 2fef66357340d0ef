"""Refit a package's mouth-shape model in place (``lipsync-pack train``; ``--mouth-only`` does just this).

Also how a package built before format 1.1 gets its ``mouth.safetensors``:
:func:`toolkit.writer.add_file` writes the file under a temporary name and
renames it into place, then the manifest (its ``files`` entry, ``extra.mouth``
and ``format_version`` 1.1).
"""

from __future__ import annotations

from pathlib import Path

from runtime import mouth
from runtime.package import Package

from ..build import mouth_entry
from ..writer import add_file

MIN_VERSION = "1.1"       # the format version that added mouth.safetensors


def refit(package_path: str | Path) -> mouth.MouthModel:
    """Fit the mouth-shape model on the package's training frames and store it in the package."""
    root = Path(package_path)
    model = mouth.fit(Package.open(root))
    add_file(root, mouth.MOUTH_FILE, model.to_bytes(), "mouth", mouth_entry(model), MIN_VERSION)
    return model
