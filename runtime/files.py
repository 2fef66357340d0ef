"""The one way this project replaces a file: write to a temporary name, then rename.

A server may have a package file memory-mapped while ``lipsync-pack train``
replaces it. Rewriting the file in place would change (or, truncated, zero) the
pages the server reads; renaming a new file over the old name leaves the old
inode, and every mapping of it, intact. Readers see the old file or the new
one, never a mixture.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace (or create) ``path`` with ``data``, atomically and durably.

    The bytes go to a hidden name in the same folder that no other writer uses
    (``.NAME.tmp-PID-RANDOM``; readers of a package ignore names starting with
    ``.``), are flushed and fsynced, and that name is renamed over ``path``;
    the folder is then fsynced so that the rename survives a crash. On any
    failure the temporary file is removed and ``path`` is left as it was.
    The file gets the permissions ``open(path, "wb")`` would give it.

    Parameters
    ----------
    path : str or Path
    data : bytes

    Raises
    ------
    OSError
        The folder is missing or not writable, the disk is full, ...
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where the file system cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:                    # some file systems refuse fsync on a directory (EINVAL)
        pass
    finally:
        os.close(fd)
