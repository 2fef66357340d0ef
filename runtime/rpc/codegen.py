"""Generate the Python stubs of ``docs/lipsync.proto`` into this folder.

    python -m runtime.rpc.codegen          # rewrites lipsync_pb2.py, lipsync_pb2.pyi, lipsync_pb2_grpc.py

The stubs are committed (users do not need grpcio-tools); ``tests/runtime/test_grpc.py``
regenerates them into a temporary folder and checks that they match the committed ones,
so an edit of the .proto without regenerating fails the tests. The .proto is compiled as
``runtime/rpc/lipsync.proto`` so that the generated service module imports its messages
as ``runtime.rpc.lipsync_pb2``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE.parents[1] / "docs" / "lipsync.proto"
GENERATED = ("lipsync_pb2.py", "lipsync_pb2.pyi", "lipsync_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Compile the .proto into ``out`` (a folder standing for the repository root); the files written."""
    import grpc_tools
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "runtime" / "rpc" / "lipsync.proto"
        src.parent.mkdir(parents=True)
        shutil.copyfile(PROTO, src)
        include = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main(["grpc_tools.protoc", f"-I{tmp}", f"-I{include}", f"--python_out={out}",
                          f"--pyi_out={out}", f"--grpc_python_out={out}", str(src)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
    return [out / "runtime" / "rpc" / name for name in GENERATED]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, HERE / path.name)
            print(f"wrote {HERE / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
