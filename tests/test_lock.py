"""requirements.lock against pyproject.toml and against the environment the tests run in.

The lock (``make lock``, scripts/lock.sh) pins every direct and transitive dependency of the
project and of all its extras, with hashes. These tests fail when pyproject.toml asks for
something the lock does not pin (or pins at a version pyproject no longer allows), when the
lock holds a package nothing asks for, when an extra would need a package from outside the
lock, and when the environment running the tests is not the lock.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PROJECT = "lipsync-toolkit"
FIX = "regenerate it with `make lock` (scripts/lock.sh) and commit pyproject.toml and requirements.lock together"
# The platform the lock is made for (scripts/lock.sh: CPython 3.11, x86-64 Linux).
PLATFORM = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _lock() -> dict[str, dict]:
    """{name: {"version", "hashes", "via"}} from requirements.lock."""
    out: dict[str, dict] = {}
    current = None
    via_block = False
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            current = out.setdefault(canonicalize_name(m.group(1)),
                                     {"version": Version(m.group(2)), "hashes": [], "via": set()})
            via_block = False
        elif current is None:
            continue
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            current["hashes"].append(m.group(1))
        elif m := re.match(r"^\s+# via\s*(.*)$", line):
            via_block = not m.group(1)
            if m.group(1):
                current["via"].add(m.group(1).strip())
        elif via_block and (m := re.match(r"^\s+#\s+(.+)$", line)):
            current["via"].add(m.group(1).strip())
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None) -> list[Requirement]:
    """What pyproject asks for, the base install (None) or one extra, on the lock's platform."""
    project = _pyproject()
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**PLATFORM, "extra": extra or ""})]


EXTRAS = [None] + list(_pyproject()["optional-dependencies"])


@pytest.fixture(scope="module")
def lock():
    return _lock()


def test_the_lock_pins_everything_with_hashes(lock):
    assert len(lock) > 20
    for name, entry in lock.items():
        assert entry["hashes"], f"requirements.lock pins {name} without a hash: {FIX}"
    assert str(lock["torch"]["version"]) == "2.13.0+cpu", f"the lock must pin torch's CPU build: {FIX}"


@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: e or "base")
def test_the_lock_satisfies_pyproject(lock, extra):
    """Every requirement of pyproject.toml (base and each extra) is pinned, at an allowed version."""
    for req in _requirements(extra):
        name = canonicalize_name(req.name)
        if name == PROJECT:                          # an extra that includes others
            continue
        assert name in lock, f"pyproject.toml asks for {req} ({extra or 'base'}); requirements.lock lacks it: {FIX}"
        pinned = lock[name]["version"]
        assert req.specifier.contains(pinned, prereleases=True), \
            f"pyproject.toml asks for {req}; requirements.lock pins {name}=={pinned}: {FIX}"


def test_the_lock_holds_only_what_pyproject_needs(lock):
    """Each locked package is asked for by pyproject.toml or by another locked package."""
    reached = {name for name, e in lock.items() if any(v.startswith(PROJECT) for v in e["via"])}
    grew = True
    while grew:
        new = {name for name, e in lock.items() if name not in reached
               and any(canonicalize_name(v) in reached for v in e["via"])}
        reached |= new
        grew = bool(new)
    stray = sorted(set(lock) - reached)
    assert not stray, f"requirements.lock pins {stray}, which nothing in pyproject.toml needs: {FIX}"


def _closure(extra: str | None) -> set[str]:
    """The installed distributions that `pip install .[extra]` needs, walked through their metadata."""
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in _requirements(extra)]
    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    while todo:
        name, extras = todo.pop()
        key = (name, frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        if name == PROJECT:
            for e in extras:
                todo += [(canonicalize_name(r.name), set(r.extras)) for r in _requirements(e)]
            continue
        names.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            wanted = [""] + sorted(extras)
            if req.marker is None or any(req.marker.evaluate({**PLATFORM, "extra": e}) for e in wanted):
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return names


@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: e or "base")
def test_each_extra_installs_from_the_lock_alone(lock, extra):
    """What an extra needs, all the way down, is in the lock: `uv pip install -c requirements.lock
    '.[EXTRA]'` installs locked, hash-checked versions only."""
    needed = _closure(extra)
    assert needed, extra
    missing = sorted(needed - set(lock))
    assert not missing, f"installing .[{extra or ''}] needs {missing}, which requirements.lock lacks: {FIX}"


def test_the_environment_is_the_lock(lock):
    """The environment running these tests holds every locked package at its locked version."""
    wrong = []
    for name, entry in lock.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} (not installed)")
            continue
        if installed != entry["version"]:
            wrong.append(f"{name} {installed} (locked {entry['version']})")
    assert not wrong, f"this environment is not requirements.lock: {', '.join(wrong)}; run `make setup`"
