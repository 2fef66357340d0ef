"""Temporary alias of :mod:`toolkit.evaluate.run`, the evaluation's new name.

Removed once ``toolkit/evaluate/cli.py`` imports ``EvalConfig`` and ``evaluate`` from :mod:`toolkit.evaluate.run`.
"""

from .run import EvalConfig, Evaluation, evaluate, silence_audio  # noqa: F401
