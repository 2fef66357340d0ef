"""``python -m toolkit``: the same as ``lipsync-pack``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="lipsync-pack")
