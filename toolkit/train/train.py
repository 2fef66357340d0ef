"""Temporary alias of :mod:`toolkit.train.loop`, the training loop's new name.

Removed once ``toolkit/cli.py`` imports ``main`` from :mod:`toolkit.train.loop`.
"""

from .loop import CHECKPOINT_DIR, WEIGHTS, TrainConfig, TrainResult, main, train  # noqa: F401

if __name__ == "__main__":
    main()
