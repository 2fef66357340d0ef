"""Training of the neural generator (:mod:`runtime.neural`) on one package.

:mod:`.dataset` reads examples from a package's training frames only;
:mod:`.train` runs the optimisation, checkpoints it, and stores the weights in
the package. Run it as ``lipsync-pack train PACKAGE`` or call
``toolkit.train.train.train``. (This file imports neither, so that ``-m``
runs the module fresh.)
"""
