"""``python -m runtime``: the same as ``lipsync-serve``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="lipsync-serve")
