"""Training of the neural generator (:mod:`runtime.neural`) on one package.

:mod:`.dataset` reads examples from a package's training frames only;
:mod:`.loop` runs the optimisation, checkpoints it, and stores the weights in
the package; :mod:`.mouth` refits the package's mouth-shape model. Run it as
``lipsync-pack train PACKAGE`` or call :func:`toolkit.train.loop.train`. (This
file imports none of them, so that ``-m`` runs a module fresh.)
"""
