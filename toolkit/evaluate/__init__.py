"""``lipsync-eval``: how well generators lip-sync a package.

:mod:`.run` is the whole evaluation (:func:`toolkit.evaluate.run.evaluate`, the
API the CLI calls); :mod:`.harness` drives the server's own renderer (or a
running server), :mod:`.quality` and :mod:`.syncnet` measure, :mod:`.stats`
gives block-bootstrap intervals, :mod:`.report` writes the report folder.
"""
