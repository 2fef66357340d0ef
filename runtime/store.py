"""The packages a server offers: names to folders, each opened (memory-mapped) on first use.

``PackageStore`` maps safe names to package folders: either one package
(``lipsync-serve models/anchor``) or every package folder directly inside a
directory (``lipsync-serve models/``). A name is a folder name matching
NAME_RE; it is looked up among the folders listed, never joined onto a path,
so it cannot leave the served folder; nor can a symbolic link: a package
folder whose real path lies outside the served folder is refused.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .errors import InputError, PackageError
from .package import MANIFEST, NAME_RE, Package


class PackageStore:
    """Named packages under one folder, opened (mmap) on first use and then kept.

    Parameters
    ----------
    path : path
        A package folder, or a folder whose sub-folders are packages.
    """

    def __init__(self, path: str | Path):
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise InputError(f"{path}: no such folder; pass a package folder or a folder of packages")
        self.path = root
        self.single = (root / MANIFEST).is_file()
        self.root = root.parent if self.single else root
        self._only = root.name if self.single else None
        self._open: dict[str, Package] = {}
        self._left_out: set[str] = set()
        self._lock = threading.Lock()
        if not self.names():
            raise InputError(f"{path}: no packages here (no */manifest.json); build one with "
                             f"`lipsync-pack build VIDEO -o {Path(path) / 'NAME'}`")

    def names(self) -> list[str]:
        """Package names on offer, sorted (re-listed on each call: new packages appear)."""
        if self._only is not None:
            return [self._only]
        return sorted(p.name for p in self.root.iterdir()
                      if NAME_RE.match(p.name) and p.name not in self._left_out and (p / MANIFEST).is_file())

    def leave_out(self, name: str) -> None:
        """Stop offering package ``name`` (it failed its checks)."""
        self._left_out.add(name)
        self._open.pop(name, None)

    @property
    def default(self) -> str | None:
        """The first package on offer; None when every package was unloaded."""
        names = self.names()
        return names[0] if names else None

    def folder(self, name: str) -> Path:
        """The folder of package ``name``.

        KeyError if there is no such package; PackageError if, in a folder of
        packages, it is a link to somewhere outside that folder.
        """
        if self._only is not None:                     # one package: its folder name, whatever it is
            if name != self._only:
                raise KeyError(name)
            return self.root / name
        if not isinstance(name, str) or not NAME_RE.match(name) or name not in self.names():
            raise KeyError(name)
        folder = self.root / name
        if not folder.resolve().is_relative_to(self.root):
            raise PackageError(f"{folder}: links to {folder.resolve()}, outside the served folder {self.root}; "
                               "copy or move the package into it")
        return folder

    def get(self, name: str) -> Package:
        """The open (memory-mapped) package ``name``, opened now if need be.

        KeyError if there is no such package; PackageError if it is damaged.
        """
        package = self._open.get(name)
        if package is not None:
            return package
        folder = self.folder(name)
        with self._lock:
            if name not in self._open:
                self._open[name] = Package.open(folder)
            return self._open[name]

    def is_open(self, name: str) -> bool:
        """Is package ``name`` memory-mapped in this process now?"""
        return name in self._open

    def load(self, name: str, check=None) -> Package:
        """Offer package ``name`` again (after :meth:`unload` or a failed start-up check) and open it now.

        ``check(package)`` may raise to refuse it (then it stays left out). KeyError if no
        such package folder is in the served folder.
        """
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise KeyError(name)
        was_out = name in self._left_out
        self._left_out.discard(name)
        try:
            package = self.get(name)
            if check is not None:
                check(package)
        except BaseException:
            if was_out:
                self.leave_out(name)
            raise
        return package

    def unload(self, name: str) -> bool:
        """Stop offering package ``name`` and drop this process's mapping of it; False if it was not offered."""
        if name not in self.names():
            return False
        if self._only is not None:
            self._open.pop(name, None)               # the one package stays offered; only unmapped
            return True
        self.leave_out(name)
        return True

    def close(self) -> None:
        self._open.clear()
