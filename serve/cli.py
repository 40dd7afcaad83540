"""``rnnpolicy serve``: load exported models and serve them until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from rnnpolicy.configcli import add_dataclass_arguments, dataclass_from_args
from rnnpolicy.export.interface import ONNX_FILE
from rnnpolicy.serve.auth import TOKEN_FILE_HELP, Security, is_loopback_host
from rnnpolicy.serve.limits import raise_open_file_limit
from rnnpolicy.serve.redis_store import redacted_url
from rnnpolicy.serve.server import ServeConfig, create_server, serve_until_signal

__all__ = ["CONFIG_OPTIONS", "add_serve_arguments", "parse_models", "run_serve"]

CONFIG_OPTIONS = {"intra_op_threads": "--threads"}
"""ServeConfig fields whose option is not ``--field-name`` (kept from earlier releases)."""

_log = logging.getLogger("rnnpolicy.serve")


def add_serve_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]EXPORT_DIR",
                        help=f"an export directory (or {ONNX_FILE}) to serve, optionally named; repeat for more models "
                             "(unnamed: the directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default %(default)s)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds in-flight calls get to finish on SIGTERM/SIGINT (default %(default)s)")
    parser.add_argument("--quiet-sessions", action="store_true",
                        help="do not log a line per session lifecycle event (metrics still count them)")
    limits = parser.add_argument_group("limits and tuning", "one option per ServeConfig field (docs/serving.md)")
    add_dataclass_arguments(limits, ServeConfig, options=CONFIG_OPTIONS)
    security = parser.add_argument_group("security", "TLS and token authentication (docs/serving.md, Security)")
    security.add_argument("--tls-cert", type=Path, metavar="PEM",
                          help="serve TLS with this certificate chain (needs --tls-key)")
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's unencrypted private key")
    security.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                          help="mutual TLS: require client certificates signed by these CA certificates")
    security.add_argument("--auth-tokens", type=Path, metavar="FILE",
                          help=f"require a bearer token on every call: {TOKEN_FILE_HELP}")


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
    if args.quiet_sessions:
        logging.getLogger("rnnpolicy.serve.sessions").setLevel(logging.WARNING)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0..65535")
    config = dataclass_from_args(ServeConfig, args, options=CONFIG_OPTIONS)
    models = parse_models(args.model)
    security = Security(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                        auth_tokens=args.auth_tokens)
    if security.auth and not security.tls and not is_loopback_host(args.host):
        _log.warning("--auth-tokens without TLS on %s: tokens cross the network in plaintext; add --tls-cert/--tls-key",
                     args.host)
    raise_open_file_limit(config.max_concurrent_rpcs)  # a client per connection: up to one descriptor per call
    server, port = create_server(models, f"{args.host}:{args.port}", config, security=security)
    described = ", ".join(f"{name}={m.spec.kind}/{m.spec.cell} v{m.version} ({models[name]})"
                          for name, m in server.models.items())
    settings = " ".join(f"{field.name}={getattr(config, field.name)}" for field in dataclasses.fields(config)
                        if field.name != "session_store")
    settings += f" session_store={redacted_url(config.session_store) or '-'}"  # never the password
    metrics = f"http://{config.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port is not None else "off"
    _log.info("serving %s on %s:%d; sessions_restored=%d metrics=%s %s; %s", described, args.host, port,
              len(server.directory), metrics, security.describe(), settings)
    serve_until_signal(server, args.grace)
    return 0
