"""``rnnpolicy serve``: load exported models and serve them until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rnnpolicy.serve.server import ServeConfig, create_server, serve_until_signal

__all__ = ["add_serve_arguments", "parse_models", "run_serve"]

_log = logging.getLogger("rnnpolicy.serve")


def add_serve_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    defaults = ServeConfig()
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]EXPORT_DIR",
                        help="an export directory (or model.onnx) to serve, optionally named; repeat for more models "
                             "(unnamed: the directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions,
                        help="most sessions at once, over all models (default %(default)s)")
    parser.add_argument("--session-ttl", type=float, default=defaults.session_ttl,
                        help="seconds an idle session lives; 0 never expires (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="most steps per onnxruntime call (default %(default)s)")
    parser.add_argument("--max-wait-us", type=int, default=defaults.max_wait_us,
                        help="microseconds a batch waits to fill; 0 runs at once (default %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.intra_op_threads,
                        help="onnxruntime intra-op threads per model (default %(default)s)")
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers,
                        help="gRPC handler threads = most concurrent calls and open streams (default %(default)s)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds in-flight calls get to finish on SIGTERM/SIGINT (default %(default)s)")


def parse_models(values: list[str]) -> dict[str, Path]:
    """``["EXPORT_DIR", "NAME=EXPORT_DIR", ...]`` -> ``{name: path}``; ``ValueError`` naming a bad or repeated entry."""
    models: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "", value
        path_obj = Path(path)
        name = name or (path_obj.stem if path_obj.suffix == ".onnx" else path_obj.name)
        if not path or not name:
            raise ValueError(f"--model {value!r}: expected EXPORT_DIR or NAME=EXPORT_DIR")
        if not path_obj.exists():
            raise ValueError(f"--model {value!r}: {path!r} does not exist (expected an export directory)")
        if name in models:
            raise ValueError(f"--model {value!r}: model name {name!r} is given twice; name them NAME=EXPORT_DIR")
        models[name] = path_obj
    return models


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0..65535")
    config = ServeConfig(max_sessions=args.max_sessions, session_ttl=args.session_ttl, max_batch=args.max_batch,
                         max_wait_us=args.max_wait_us, intra_op_threads=args.threads, max_workers=args.max_workers)
    models = parse_models(args.model)
    server, port = create_server(models, f"{args.host}:{args.port}", config)
    described = ", ".join(f"{name}={m.spec.kind}/{m.spec.cell} v{m.version} ({models[name]})"
                          for name, m in server.models.items())
    _log.info("serving %s on %s:%d; max_sessions=%d session_ttl=%gs max_batch=%d max_wait_us=%d threads=%d",
              described, args.host, port, config.max_sessions, config.session_ttl, config.max_batch,
              config.max_wait_us, config.intra_op_threads)
    serve_until_signal(server, args.grace)
    return 0
