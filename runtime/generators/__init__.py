"""Generators: the tiers that turn audio into face crops, chosen by name.

``GENERATORS`` maps each name to its class; a chain is a comma-separated list
of names, first choice first (``"retrieval,static"``). ``retrieval`` is the
default first tier until a package holds trained weights.
"""

from __future__ import annotations

from ..errors import InputError
from ..package import Package
from .base import Generator, NotReady, Request
from .chain import Chain
from .retrieval import RetrievalGenerator
from .static import StaticGenerator

GENERATORS: dict[str, type[Generator]] = {
    StaticGenerator.name: StaticGenerator,
    RetrievalGenerator.name: RetrievalGenerator,
}
DEFAULT_CHAIN = ("retrieval", "static")


def parse_chain(spec: str | None) -> tuple[str, ...]:
    """``"retrieval,static"`` -> ("retrieval", "static"); None or "auto" -> the default."""
    if spec is None or spec.strip() in ("", "auto"):
        return DEFAULT_CHAIN
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in GENERATORS]
    if unknown or not names:
        raise InputError(f"unknown generator {unknown[0] if unknown else spec!r}; "
                         f"choose from {', '.join(GENERATORS)} (comma-separated, first choice first)")
    return names


def build_chain(package: Package, spec: str | None = None) -> Chain:
    """The fallback chain for a package, from a spec like ``"retrieval,static"``."""
    return Chain(package, [GENERATORS[n] for n in parse_chain(spec)])


__all__ = ["GENERATORS", "DEFAULT_CHAIN", "Chain", "Generator", "NotReady", "Request",
           "parse_chain", "build_chain"]
