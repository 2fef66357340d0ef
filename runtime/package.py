"""Open and verify model packages (see docs/package-format.md).

Opening reads and validates ``manifest.json`` and maps the arrays with
``np.load(mmap_mode="r", allow_pickle=False)``: nothing is decoded, so opening
costs the same for a 2-second and a 2-hour package. :func:`verify` re-hashes
every file and is what ``lipsync-pack verify`` runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import PackageError
from .schema import iter_errors, load_schema

FORMAT_NAME = "lipsync-package"
FORMAT_VERSION = "1.1"          # major.minor; readers refuse another major; 1.1 added mouth.safetensors
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")   # a package's folder name (docs/package-format.md):
                                                              # what writers accept and sessions may ask for
SCHEMA_PATH = Path(__file__).with_name("schema") / "manifest.schema.json"

# Files a reader can do without: serving falls back to the next generator tier
# (``lipsync-pack verify`` still reports them missing).
NEURAL_WEIGHTS = "neural.safetensors"     # written by `lipsync-pack train`
MOUTH_MODEL = "mouth.safetensors"         # format 1.1; missing: the server refuses the package with a clear
                                          # error, and `lipsync-pack train --mouth-only` can still open it to refit
OPTIONAL_FILES = frozenset({NEURAL_WEIGHTS, MOUTH_MODEL})

# Frame flags (flags.npy, uint8), one per frame.
FLAG_MEASURED = 0       # landmarks measured on this frame
FLAG_INTERPOLATED = 1   # face lost briefly; landmarks interpolated from neighbours
FLAG_LOST = 2           # face lost for long; landmarks held from the nearest frame, do not train on it


def _schema() -> dict:
    return load_schema(SCHEMA_PATH)


def validate_manifest(manifest: object, where: str = MANIFEST) -> dict:
    """Check a manifest against the version rule and the JSON schema.

    Raises
    ------
    PackageError
        Naming the first offending field and how to fix it.
    """
    if not isinstance(manifest, dict):
        raise PackageError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME:
        raise PackageError(f"{where}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r};"
                           " is this a lipsync package folder?")
    version = str(manifest.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise PackageError(f"{where}: format_version {version!r} is not readable by this reader"
                           f" (reads {FORMAT_VERSION.split('.')[0]}.x); rebuild the package or upgrade")
    errors = sorted(iter_errors(manifest, _schema()), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        path = "/".join(str(p) for p in e.path) or "(top level)"
        raise PackageError(f"{where}: field {path}: {e.message}")
    return manifest


def read_manifest(path: str | Path) -> dict:
    """Read and validate ``PATH/manifest.json``."""
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise PackageError(f"{root}: no such package folder; build one with `lipsync-pack build VIDEO -o {root}`")
    if not mpath.is_file():
        raise PackageError(f"{mpath}: missing; {root} is not a package (or its build did not finish)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{mpath}: not valid JSON ({exc}); the package is corrupt, rebuild it") from None
    return validate_manifest(manifest, str(mpath))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Package:
    """A model package opened for reading; arrays are memory-mapped on first use.

    Attributes
    ----------
    root : Path
    manifest : dict
        The validated manifest.
    """

    root: Path
    manifest: dict
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Package":
        """Validate the manifest and check every listed file cheaply (no hashing).

        Each file must be present (weights may be missing), lie inside the package
        folder (no link out of it), have the size the manifest records; each array's
        header must match its manifest dtype and shape, and each weights file's
        header must describe tensors that fit the file. ``verify`` also hashes.
        """
        root = Path(path)
        manifest = read_manifest(root)
        missing = [name for name in manifest["files"]
                   if not (root / name).is_file() and name not in OPTIONAL_FILES]
        if missing:
            raise PackageError(f"{root}: missing file {missing[0]}; the package is incomplete, rebuild it")
        pkg = cls(root=root, manifest=manifest)
        real_root = root.resolve()
        for name, entry in manifest["files"].items():
            fpath = root / name
            if not fpath.is_file():
                continue
            _inside(fpath, real_root)
            size = fpath.stat().st_size
            if size != entry["bytes"]:
                raise PackageError(f"{fpath}: {size} bytes, manifest says {entry['bytes']}; the file is truncated "
                                   f"or altered, run `lipsync-pack verify {root}` and rebuild")
            if name.endswith(".npy"):
                pkg.array(name[:-4])
            elif name.endswith(".safetensors"):
                check_safetensors(fpath)
        pkg.check_values()
        return pkg

    def check_values(self) -> None:
        """PackageError for values no build writes, in the arrays small enough to scan at open.

        Landmarks and mouth boxes must be finite and near the crop, mel features finite and in
        [-4, 4] (the spec's range). Scanning them costs milliseconds (5 minutes of footage: 4 MB
        of landmarks, 8 MB of mel), unlike hashing crops.npy, which only ``verify`` does: damage
        inside the crops' pixels is not found at open. A NaN landmark would silently drop the
        retrieval tier to the static one.
        """
        size = float(self.manifest["crop"]["size"])
        checks = (("landmarks", -size, 2 * size, "crop pixels"), ("mouth_boxes", -size, 2 * size, "crop pixels"),
                  ("mel", -4.0 - 1e-3, 4.0 + 1e-3, "log-mel units"))
        for name, lo, hi, unit in checks:
            if f"{name}.npy" not in self.manifest["files"]:
                continue
            values = np.asarray(self.array(name), dtype=np.float32)
            bad = ~np.isfinite(values) | (values < lo) | (values > hi)
            if bad.any():
                first = tuple(np.argwhere(bad)[0])
                row, value = int(first[0]), values[first]
                raise PackageError(f"{self.root / (name + '.npy')}: row {row} holds {value:g}, outside "
                                   f"[{lo:g}, {hi:g}] {unit}; the file is damaged: run `lipsync-pack verify "
                                   f"{self.root}` and rebuild")

    def array(self, name: str) -> np.ndarray:
        """Memory-map ``NAME.npy`` read-only, checking dtype and shape against the manifest."""
        if name not in self._arrays:
            fname = f"{name}.npy"
            entry = self.manifest["files"].get(fname)
            if entry is None:
                raise PackageError(f"{self.root}: no array {fname} in this package")
            try:
                arr = np.load(self.root / fname, mmap_mode="r", allow_pickle=False)
            except Exception as exc:        # a damaged header fails in numpy's parser in several ways
                why = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise PackageError(f"{self.root / fname}: unreadable ({why}); run `lipsync-pack verify "
                                   f"{self.root}` and rebuild") from None
            if str(arr.dtype) != entry["dtype"] or list(arr.shape) != entry["shape"]:
                raise PackageError(f"{self.root / fname}: holds {arr.dtype}{list(arr.shape)}, manifest says"
                                   f" {entry['dtype']}{entry['shape']}; the package is corrupt, rebuild it")
            self._arrays[name] = arr
        return self._arrays[name]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def fps(self) -> float:
        return float(self.manifest["video"]["fps"])

    @property
    def frames(self) -> int:
        return int(self.manifest["video"]["frames"])

    @property
    def has_split(self) -> bool:
        return "split" in self.manifest

    @cached_property
    def train_range(self) -> range:
        """Frames that generators and training may use (the held-out tail excluded).

        A package without a split (written before it existed) trains on every frame.
        """
        if not self.has_split:
            return range(self.frames)
        return range(*self.manifest["split"]["train_frames"])

    @cached_property
    def usable_train_frames(self) -> np.ndarray:
        """int64 [K]: training frames not flagged lost, the frames generators and training may read."""
        frames = np.arange(self.train_range.start, self.train_range.stop, dtype=np.int64)
        return frames[np.asarray(self.flags)[frames] != FLAG_LOST]

    @cached_property
    def holdout_range(self) -> range:
        """The held-out tail; PackageError for a package without a split."""
        if not self.has_split:
            raise PackageError(f"{self.root}: this package has no held-out split (it was built before packages "
                               f"recorded one); rebuild it with `lipsync-pack build VIDEO -o {self.root} --force`")
        return range(*self.manifest["split"]["holdout_frames"])

    crops = property(lambda self: self.array("crops"), doc="uint8 [N, S, S, 3] RGB face crops")
    landmarks = property(lambda self: self.array("landmarks"), doc="float32 [N, 68, 2] in crop pixels")
    boxes = property(lambda self: self.array("boxes"), doc="int32 [N, 4] crop boxes in source pixels")
    mouth_boxes = property(lambda self: self.array("mouth_boxes"), doc="float32 [N, 4] in crop pixels")
    flags = property(lambda self: self.array("flags"), doc="uint8 [N] FLAG_* per frame")
    mel = property(lambda self: self.array("mel"), doc="float32 [M, 80] log-mel features")


def verify(path: str | Path) -> list[str]:
    """Every check of :meth:`Package.open`, then re-hash every file (weights included: none may be missing).

    Returns
    -------
    list of str
        The names of the files checked, in manifest order.

    Raises
    ------
    PackageError
        Naming the first missing, resized or altered file.
    """
    root = Path(path)
    for name in read_manifest(root)["files"]:
        if not (root / name).is_file():
            raise PackageError(f"{root / name}: missing; the package is incomplete, rebuild it")
    manifest = Package.open(root).manifest       # links, sizes and headers
    checked = []
    for name, entry in manifest["files"].items():
        fpath = root / name
        if sha256_file(fpath) != entry["sha256"]:
            raise PackageError(f"{fpath}: sha256 does not match the manifest; the file was altered or corrupted")
        checked.append(name)
    return checked


def _inside(fpath: Path, root: Path) -> None:
    """PackageError if ``fpath`` is a link to somewhere outside the package folder ``root``."""
    if not fpath.resolve().is_relative_to(root.resolve()):
        raise PackageError(f"{fpath}: links to {fpath.resolve()}, outside the package folder; "
                           "copy the file into the package")


_SAFETENSORS_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                      "U8": 1, "BOOL": 1}
_MAX_HEADER = 1 << 24


def check_safetensors(path: Path) -> None:
    """PackageError unless ``path`` has a readable safetensors header whose tensors fit the file.

    Reads the header only (8-byte length, JSON); tensors are not read.
    """
    def bad(why: str) -> PackageError:
        return PackageError(f"{path}: not a readable safetensors file ({why}); "
                            "retrain or rebuild to write it again")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad("shorter than its 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(_MAX_HEADER, size - 8):
                raise bad(f"header length {n} does not fit the file")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as exc:
        raise PackageError(f"{path}: unreadable ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = _SAFETENSORS_SIZES[t["dtype"]]
            count = int(np.prod([int(d) for d in t["shape"]], dtype=np.int64))
            start, stop = (int(v) for v in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {str(name)[:60]!r} has no valid dtype, shape and offsets") from None
        if not 0 <= start <= stop <= data or stop - start != count * itemsize:
            raise bad(f"tensor {str(name)[:60]!r} does not fit the file")
