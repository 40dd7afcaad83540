"""``rnnpolicy serve``: load exported models and serve them until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rnnpolicy.serve.auth import TOKEN_FILE_HELP, Security, is_loopback_host
from rnnpolicy.serve.server import MAX_BUSY_POLL_US, ServeConfig, create_server, serve_until_signal

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
    parser.add_argument("--busy-poll-us", type=int, default=defaults.busy_poll_us, metavar="US",
                        help="microseconds the event loop polls for the next message before it sleeps: lower latency "
                             "for clients stepping back to back, for that much CPU time; 0 off, at most "
                             f"{MAX_BUSY_POLL_US} (default %(default)s)")
    parser.add_argument("--split-batch-rows", type=int, default=defaults.split_batch_rows, metavar="ROWS",
                        help="an onnxruntime call of at least ROWS rows runs as two halves at once on two threads "
                             "(with --threads 1); 0 never (default %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.intra_op_threads,
                        help="onnxruntime intra-op threads per model (default %(default)s)")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=defaults.max_concurrent_rpcs,
                        help="most calls in progress at once, open streams included (an open stream costs no thread); "
                             "beyond it calls are refused RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--quiet-sessions", action="store_true",
                        help="do not log a line per session lifecycle event (metrics still count them)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds in-flight calls get to finish on SIGTERM/SIGINT (default %(default)s)")
    parser.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes,
                        help="largest request accepted; larger ones are RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--max-sessions-per-principal", type=int, default=defaults.max_sessions_per_principal,
                        help="most sessions one auth principal may hold; 0: no limit (default %(default)s)")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="save sessions here on shutdown (and every --checkpoint-interval) and restore them "
                             "on start, so clients continue across restarts")
    parser.add_argument("--session-store", default=defaults.session_store, metavar="URL",
                        help="share sessions between replicas in Redis: redis://[:PASSWORD@]HOST:PORT/DB or rediss://...; "
                             "every step is committed there before it is answered, so any replica can continue any "
                             "session (docs/cluster.md; needs rnnpolicy[cluster]). Default: sessions live in this process")
    parser.add_argument("--checkpoint-interval", type=float, default=defaults.checkpoint_interval, metavar="S",
                        help="seconds between session snapshots to --state-dir; a crash (kill -9) loses at most the "
                             "steps of the last S seconds; 0: only on graceful shutdown (default %(default)s)")
    parser.add_argument("--reload-interval", type=float, default=defaults.reload_interval, metavar="S",
                        help="seconds between checks of each --model directory for a changed model.onnx, loaded as "
                             "a new version; 0: only on SIGHUP (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics at http://--metrics-host:PORT/metrics (default: off)")
    parser.add_argument("--metrics-host", default=defaults.metrics_host,
                        help="address of the metrics endpoint (default %(default)s)")
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
    config = ServeConfig(max_sessions=args.max_sessions, session_ttl=args.session_ttl, max_batch=args.max_batch,
                         max_wait_us=args.max_wait_us, intra_op_threads=args.threads, max_concurrent_rpcs=args.max_concurrent_rpcs,
                         max_message_bytes=args.max_message_bytes,
                         max_sessions_per_principal=args.max_sessions_per_principal, state_dir=args.state_dir,
                         session_store=args.session_store, checkpoint_interval=args.checkpoint_interval, reload_interval=args.reload_interval,
                         metrics_port=args.metrics_port, metrics_host=args.metrics_host, busy_poll_us=args.busy_poll_us,
                         split_batch_rows=args.split_batch_rows)
    models = parse_models(args.model)
    security = Security(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                        auth_tokens=args.auth_tokens)
    if security.auth and not security.tls and not is_loopback_host(args.host):
        _log.warning("--auth-tokens without TLS on %s: tokens cross the network in plaintext; add --tls-cert/--tls-key",
                     args.host)
    server, port = create_server(models, f"{args.host}:{args.port}", config, security=security)
    described = ", ".join(f"{name}={m.spec.kind}/{m.spec.cell} v{m.version} ({models[name]})"
                          for name, m in server.models.items())
    _log.info("serving %s on %s:%d; max_sessions=%d session_ttl=%gs max_batch=%d max_wait_us=%d busy_poll_us=%d "
              "split_batch_rows=%d threads=%d sessions_restored=%d store=%s checkpoint_interval=%gs reload_interval=%gs metrics=%s %s",
              described, args.host, port, config.max_sessions, config.session_ttl, config.max_batch,
              config.max_wait_us, config.busy_poll_us, config.split_batch_rows, config.intra_op_threads, len(server.directory),
              config.state_dir or server.store.describe,
              config.checkpoint_interval, config.reload_interval,
              f"http://{config.metrics_host}:{server.metrics_port}/metrics" if server.metrics_port is not None else "off",
              security.describe())
    serve_until_signal(server, args.grace)
    return 0
