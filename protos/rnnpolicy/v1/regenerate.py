"""Regenerate the committed protobuf/gRPC code next to the ``.proto`` files (needs ``grpcio-tools``).

``python -m rnnpolicy.v1.regenerate`` rewrites ``policy_pb2.py``, ``policy_pb2.pyi``,
``policy_pb2_grpc.py`` (the service) and ``session_record_pb2.py``, ``session_record_pb2.pyi`` (the
storage format of sessions); ``--check`` writes nothing and exits 1 when they are out of date.
protoc runs with ``-I`` at the directory holding ``rnnpolicy/``, so generated imports read
``from rnnpolicy.v1 import policy_pb2`` and work without patching.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["GENERATED", "PROTOS", "generate", "main"]

_HERE = Path(__file__).resolve().parent
_INCLUDE = _HERE.parents[1]  # the directory that holds rnnpolicy/v1/policy.proto
PROTOS = ("rnnpolicy/v1/policy.proto", "rnnpolicy/v1/session_record.proto")
GENERATED = ("policy_pb2.py", "policy_pb2.pyi", "policy_pb2_grpc.py", "session_record_pb2.py", "session_record_pb2.pyi")


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc on the ``.proto`` files into ``out_dir``; return the generated files' text by name."""
    from grpc_tools import protoc  # a dev dependency: imported only to regenerate

    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{_INCLUDE}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(_INCLUDE / proto) for proto in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTOS}")
    produced = out_dir / "rnnpolicy" / "v1"
    return {name: (produced / name).read_text() for name in GENERATED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnpolicy.v1.regenerate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    stale = [n for n, text in fresh.items() if not (_HERE / n).is_file() or (_HERE / n).read_text() != text]
    if args.check:
        for name in stale:
            print(f"{_HERE / name} is out of date: run python -m rnnpolicy.v1.regenerate", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (_HERE / name).write_text(fresh[name])
        print(f"wrote {_HERE / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
