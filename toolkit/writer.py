"""Write packages atomically: a new package through a hidden sibling folder, a file of a published one
through a temporary name (docs/package-format.md, Writing rules).

A reader never sees a half-written package: until :meth:`PackageWriter.commit`
renames ``.NAME.partial-PID`` to ``NAME``, the package does not exist. An
interrupted build leaves only the hidden folder, which the next build into the
same parent removes once its process is gone. Replacing a package (``--force``)
moves the old folder aside and deletes it only after the new one is in place, so
a server that has the old files memory-mapped keeps reading intact files.

:func:`add_file` is the one way to add or replace a file in a published package
(``lipsync-pack train``'s weights and mouth-model refit, and anything later).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.files import fsync_dir, write_atomic
from runtime.package import MANIFEST, NAME_RE, read_manifest, sha256_file, validate_manifest

MEDIA_TYPES = {".wav": "audio/wav", ".mp4": "video/mp4", ".png": "image/png",
               ".json": "application/json", ".safetensors": "application/octet-stream"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _manifest_bytes(manifest: dict) -> bytes:
    """``manifest.json`` as the reference writer lays it out: indented by 2, one newline at the end."""
    return (json.dumps(manifest, indent=2) + "\n").encode()


def add_file(root: str | Path, name: str, data: bytes, extra_key: str, extra: dict,
             min_version: str | None = None) -> str:
    """Add file ``name`` holding ``data`` to the published package ``root``, or replace it, and record it.

    The spec's rule for changing a published package (docs/package-format.md, Writing rules 5):
    the manifest is read and the new one validated first; then the file is written atomically,
    then the manifest, with the file's entry in ``files``, ``extra[extra_key]`` and, with
    ``min_version``, a format version of at least that minor.

    Returns
    -------
    str
        The file's sha256 (hex), as recorded.

    Raises
    ------
    PackageError
        ``root`` is not a readable package, or the new manifest would not validate; nothing is written.
    """
    root = Path(root)
    digest = hashlib.sha256(data).hexdigest()
    manifest = read_manifest(root)
    manifest["files"][name] = {"sha256": digest, "bytes": len(data),
                               "media_type": MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")}
    manifest.setdefault("extra", {})[extra_key] = extra
    if min_version is not None:
        have = tuple(int(v) for v in manifest["format_version"].split("."))
        if have < tuple(int(v) for v in min_version.split(".")):
            manifest["format_version"] = min_version
    validate_manifest(manifest, "manifest being written")
    write_atomic(root / name, data)
    write_atomic(root / MANIFEST, _manifest_bytes(manifest))
    return digest


class PackageWriter:
    """Collects a package's files in a temporary folder; :meth:`commit` publishes it.

    Use as a context manager: leaving the block with an exception removes the
    temporary folder.

    Raises
    ------
    InputError
        The name is not allowed, the package exists (without ``force``), the
        destination is not a package, or the folder cannot be written.
    """

    def __init__(self, dest: str | Path, force: bool = False):
        self.dest = Path(dest).absolute()
        self.name = self.dest.name
        if not NAME_RE.match(self.name):
            raise InputError(f"-o {dest}: the package name {self.name!r} must be 1-64 letters, digits, '.', '_'"
                             " or '-', starting with a letter or digit")
        if self.dest.exists() and not force:
            raise InputError(f"{dest} already exists; pass --force to replace it, or choose another -o")
        if self.dest.exists() and not self._replaceable(self.dest):
            raise InputError(f"{dest} exists and is not a lipsync package; refusing to replace it")
        self.force = force
        self.tmp = self.dest.parent / f".{self.name}.partial-{os.getpid()}"
        blocker = next((p for p in [self.dest.parent, *self.dest.parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise InputError(f"cannot write the package at {dest}: {blocker} is a file, not a folder;"
                             " choose another -o")
        self._made = [p for p in [self.dest.parent, *self.dest.parent.parents] if not p.exists()]
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            self.tmp.mkdir()
            probe = self.tmp / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise InputError(f"cannot write the package at {dest}: {exc.strerror or exc};"
                             " choose a writable folder with -o") from None

    @staticmethod
    def _replaceable(path: Path) -> bool:
        return path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))

    def _remove_stale(self) -> None:
        for old in self.dest.parent.glob(f".{self.name}.partial-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)

    def __enter__(self) -> "PackageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def path(self, name: str) -> Path:
        """Where to write file ``name`` before the commit."""
        return self.tmp / name

    def array(self, name: str, shape: tuple, dtype) -> np.memmap:
        """A writable ``.npy`` memmap, for arrays filled frame by frame."""
        return np.lib.format.open_memmap(self.path(name), mode="w+", dtype=dtype, shape=shape)

    def save(self, name: str, arr: np.ndarray) -> None:
        np.save(self.path(name), np.ascontiguousarray(arr), allow_pickle=False)

    def _describe(self, name: str) -> dict:
        path = self.path(name)
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        if name.endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            entry.update(dtype=str(arr.dtype), shape=list(arr.shape))
        else:
            entry["media_type"] = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return entry

    def commit(self, manifest: dict) -> dict:
        """Hash every file, write ``manifest.json`` and move the package into place.

        Returns
        -------
        dict
            The manifest as written, with its ``files`` table.
        """
        names = sorted(p.name for p in self.tmp.iterdir() if not p.name.startswith("."))
        manifest = dict(manifest, files={n: self._describe(n) for n in names if n != MANIFEST})
        validate_manifest(manifest, "manifest being written")
        write_atomic(self.path(MANIFEST), _manifest_bytes(manifest))
        old = None
        if self.dest.exists():
            old = self.dest.parent / f".{self.name}.old-{os.getpid()}"
            os.replace(self.dest, old)
        os.replace(self.tmp, self.dest)
        fsync_dir(self.dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        """Remove the temporary folder, and any parent folders this writer created, if empty."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self._made:       # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
