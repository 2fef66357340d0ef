"""Generators: the tiers that turn audio into face crops, chosen by name.

``GENERATORS`` maps each name to its class; a chain is a comma-separated list
of names, first choice first (``"retrieval,static"``). The default chain is
``neural,retrieval,static`` for a package holding trained weights
(``neural.safetensors``) and ``retrieval,static`` otherwise.
"""

from __future__ import annotations

from ..errors import InputError
from ..package import Package
from .base import Generator, NotReady, Request
from .chain import Chain
from .neural import NeuralGenerator, has_weights
from .retrieval import RetrievalGenerator
from .static import StaticGenerator

GENERATORS: dict[str, type[Generator]] = {
    StaticGenerator.name: StaticGenerator,
    RetrievalGenerator.name: RetrievalGenerator,
    NeuralGenerator.name: NeuralGenerator,
}
DEFAULT_CHAIN = ("retrieval", "static")           # a package with trained weights puts "neural" first


def parse_chain(spec: str | None, package: Package | None = None) -> tuple[str, ...]:
    """``"retrieval,static"`` -> ("retrieval", "static"); None or "auto" -> the default chain,
    with ``neural`` in front when the package holds trained weights."""
    if spec is None or spec.strip() in ("", "auto"):
        return (("neural",) if package is not None and has_weights(package) else ()) + DEFAULT_CHAIN
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in GENERATORS]
    if unknown or not names:
        raise InputError(f"unknown generator {unknown[0] if unknown else spec!r}; "
                         f"choose from {', '.join(GENERATORS)} (comma-separated, first choice first)")
    return names


def build_chain(package: Package, spec: str | None = None, options=None) -> Chain:
    """The fallback chain for a package, from a spec like ``"retrieval,static"``;
    ``options`` (:class:`runtime.options.RenderOptions`) are handed to each tier."""
    from ..options import RenderOptions

    return Chain(package, [GENERATORS[n] for n in parse_chain(spec, package)], options or RenderOptions())


__all__ = ["GENERATORS", "DEFAULT_CHAIN", "Chain", "Generator", "NotReady", "Request",
           "parse_chain", "build_chain"]
