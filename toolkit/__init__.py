"""Preprocessing toolkit: turns a speaker video into a model package.

Stages, one module each: :mod:`toolkit.video` (probe, decode, normalise),
:mod:`toolkit.faces` (detection and 68-point landmarks behind backends),
:mod:`toolkit.track` (detect, track, re-detect; lost frames),
:mod:`toolkit.smooth` (temporal smoothing, crop boxes, jitter),
:mod:`toolkit.crop` (square crops and mouth geometry),
:mod:`toolkit.audio` (16 kHz mono audio and log-mel features),
:mod:`toolkit.preview` (contact sheet), :mod:`toolkit.writer` (atomic package
writing), :mod:`toolkit.build` (the pipeline) and :mod:`toolkit.cli`.
"""

from runtime import __version__

__all__ = ["__version__"]
