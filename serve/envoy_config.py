"""An Envoy (v3 API) configuration that routes gRPC calls to rnnpolicy replicas by session.

One listener (HTTP/2, gRPC), one route, one cluster of replicas; each setting below is one a
reader can check against Envoy's reference (envoyproxy.io/docs/envoy/latest/api-v3/):

- route ``hash_policy``: the ``x-session-affinity`` header first (``terminal``: when present, it alone
  decides, so a game server's bots land together), else ``x-session-id``; calls carrying neither
  (``ListModels``, a first ``CreateSession`` without affinity) spread over the replicas;
- cluster ``lb_policy``: ``RING_HASH`` (default) or ``MAGLEV``, consistent hashing: adding or losing
  a replica moves only its share of the sessions;
- gRPC health checks of ``rnnpolicy.v1.PolicyService`` (a replica answers NOT_SERVING while it
  drains or while its session store is unreachable), also while the cluster has no traffic;
- ``retry_policy``: a call reset, refused, or answered UNAVAILABLE or CANCELLED (how a draining
  replica turns away calls that reach it after it stopped accepting) is retried on another replica
  (``previous_hosts``); safe for steps, which are exactly-once per seq wherever they land;
- ``healthy_panic_threshold: 0``: never route to unhealthy replicas, even when few are healthy;
- outlier detection ejects a replica that fails to connect or fails repeatedly between health checks;
- explicit timeouts: none on the route (a ``StepStream`` lives as long as its robot), a long stream
  idle timeout, HTTP/2 keepalive pings to the replicas so a frozen one is noticed;
- circuit breakers raised well above Envoy's defaults (1,024 concurrent requests, 3 concurrent
  retries), which a fleet of open streams and a failover would otherwise trip.

Envoy reads JSON as YAML; :func:`write_envoy_config` writes JSON (no YAML library needed).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AFFINITY_HEADER", "CLUSTER_NAME", "EnvoyOptions", "LB_POLICIES", "SESSION_HEADER", "envoy_config",
           "parse_host_port", "write_envoy_config"]

SESSION_HEADER = "x-session-id"
"""gRPC metadata every per-session call carries (the clients send it): the routing key."""
AFFINITY_HEADER = "x-session-affinity"
"""gRPC metadata with CreateSession's affinity key (e.g. a game server's id); when present it routes instead of
the session id, so that a client's sessions land on one replica."""
CLUSTER_NAME = "rnnpolicy_replicas"
LB_POLICIES = ("RING_HASH", "MAGLEV")
_HEALTH_SERVICE = "rnnpolicy.v1.PolicyService"
_TYPE = "type.googleapis.com/"


def parse_host_port(value: str, what: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[V6]:PORT`` for IPv6) -> ``(host, port)``; ``ValueError`` naming ``what`` otherwise.
    ``allow_zero``: port 0 (pick a free one) is accepted."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    low = 0 if allow_zero else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) <= 65535:
        raise ValueError(f"{what} {value!r}: expected HOST:PORT with a port {low}..65535")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _seconds(value: float) -> str:
    return f"{value:g}s"


HOST_SELECTION_ATTEMPTS = 32
"""Ring entries a retry looks at for a host it has not tried yet."""


@dataclass(frozen=True)
class EnvoyOptions:
    """What the generated configuration leaves to its user; the defaults suit a fleet of long-lived streams."""

    lb_policy: str = "RING_HASH"
    """``RING_HASH`` or ``MAGLEV`` (both consistent hashing on the session headers)."""
    health_interval: float = 1.0
    """Seconds between gRPC health checks of each replica (also while no traffic flows)."""
    health_timeout: float = 1.0
    """Seconds a health check may take before it counts as failed."""
    unhealthy_threshold: int = 2
    """Failed health checks before a replica stops receiving calls."""
    num_retries: int = 2
    """Retries of a reset, refused, UNAVAILABLE or CANCELLED call, each on another replica."""
    connect_timeout: float = 1.0
    """Seconds to connect to a replica."""
    stream_idle_timeout: float = 3600.0
    """Seconds a stream (a robot's StepStream) may stay silent before Envoy closes it (0: never)."""
    max_requests: int = 100_000
    """Concurrent calls (open streams included) Envoy sends to the replicas together."""
    admin: str | None = "127.0.0.1:9901"
    """Envoy's admin interface HOST:PORT (None: none); keep it on loopback."""
    tls_cert: str | None = None
    """Terminate TLS at the listener with this certificate chain (PEM; needs ``tls_key``)."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """Require client certificates signed by these CAs at the listener (mutual TLS; needs ``tls_cert``)."""
    upstream_tls_ca: str | None = None
    """Connect to the replicas over TLS, trusting these CAs (replicas started with ``--tls-cert``)."""
    upstream_sni: str | None = None
    """The server name to ask the replicas for over TLS (default: none sent)."""

    def __post_init__(self) -> None:
        if self.lb_policy not in LB_POLICIES:
            raise ValueError(f"lb_policy must be one of {', '.join(LB_POLICIES)}, got {self.lb_policy!r}")
        for name in ("health_interval", "health_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.stream_idle_timeout < 0:
            raise ValueError(f"stream_idle_timeout must be >= 0 seconds (0: never), got {self.stream_idle_timeout}")
        for name in ("unhealthy_threshold", "max_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {self.num_retries}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS at the listener needs both a certificate (--tls-cert) and its key (--tls-key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key at the listener")
        if self.upstream_sni and not self.upstream_tls_ca:
            raise ValueError("--upstream-sni needs --upstream-tls-ca (TLS to the replicas)")
        if self.admin is not None:
            parse_host_port(self.admin, "admin address", allow_zero=True)


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _listener(listen: tuple[str, int], options: EnvoyOptions) -> dict[str, Any]:
    route = {
        "cluster": CLUSTER_NAME,
        "timeout": "0s",  # no whole-call deadline: a StepStream lasts as long as its robot
        "hash_policy": [
            {"header": {"header_name": AFFINITY_HEADER}, "terminal": True},
            {"header": {"header_name": SESSION_HEADER}},
        ],
        "retry_policy": {
            "retry_on": "reset,connect-failure,refused-stream,unavailable,cancelled",
            "num_retries": options.num_retries,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _TYPE + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
            }],
            # A hash load balancer looks for an untried host at the session's ring entry, then the next ones
            # (Maglev: rehashes), the same entries on every retry of the session. With 3 replicas each next
            # entry is the host just tried about one time in 3, so with 5 more looks about one session in 3**5 = 243
            # found only that host and failed every retried call (a drain failed calls); with 32, one in 3**32.
            "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        },
    }
    manager = {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rnnpolicy",
        "codec_type": "HTTP2",
        "stream_idle_timeout": _seconds(options.stream_idle_timeout),
        "request_timeout": "0s",
        "common_http_protocol_options": {"idle_timeout": _seconds(max(options.stream_idle_timeout, 3600.0))},
        "http2_protocol_options": {"max_concurrent_streams": 1_000_000},
        "route_config": {
            "name": "rnnpolicy",
            "virtual_hosts": [{"name": "rnnpolicy", "domains": ["*"],
                               "routes": [{"match": {"prefix": "/"}, "route": route}]}],
        },
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"}}],
    }
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": manager}]}
    if options.tls_cert:
        context: dict[str, Any] = {
            "alpn_protocols": ["h2"],
            "tls_certificates": [{"certificate_chain": {"filename": str(Path(options.tls_cert).resolve())},
                                  "private_key": {"filename": str(Path(options.tls_key or "").resolve())}}],
        }
        tls: dict[str, Any] = {"@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                               "common_tls_context": context}
        if options.tls_client_ca:
            context["validation_context"] = {"trusted_ca": {"filename": str(Path(options.tls_client_ca).resolve())}}
            tls["require_client_certificate"] = True
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return {"name": "rnnpolicy_grpc", "address": _socket_address(*listen), "filter_chains": [chain]}


def _cluster(replicas: list[tuple[str, int]], options: EnvoyOptions) -> dict[str, Any]:
    interval = _seconds(options.health_interval)
    cluster: dict[str, Any] = {
        "name": CLUSTER_NAME,
        # Addresses as given; a host name is resolved (and re-resolved) by DNS, e.g. a Kubernetes headless Service.
        "type": "STATIC" if all(_is_ip(host) for host, _ in replicas) else "STRICT_DNS",
        "connect_timeout": _seconds(options.connect_timeout),
        "lb_policy": options.lb_policy,
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {
                # A replica that stops answering pings (frozen, or its machine gone) has its connection closed.
                "connection_keepalive": {"interval": "5s", "timeout": "2s"},
            }},
            "common_http_protocol_options": {"idle_timeout": "3600s"},
        }},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        "health_checks": [{
            "timeout": _seconds(options.health_timeout),
            "interval": interval,
            "no_traffic_interval": interval,
            "unhealthy_threshold": options.unhealthy_threshold,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": _HEALTH_SERVICE},
        }],
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,  # connection refused or reset: the replica is gone
            "consecutive_5xx": 5,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT", "max_connections": options.max_requests,
            "max_pending_requests": options.max_requests, "max_requests": options.max_requests,
            "max_retries": options.max_requests,
        }]},
        "load_assignment": {"cluster_name": CLUSTER_NAME, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _socket_address(host, port)}} for host, port in replicas]}]},
    }
    if options.upstream_tls_ca:
        context: dict[str, Any] = {"alpn_protocols": ["h2"], "validation_context": {
            "trusted_ca": {"filename": str(Path(options.upstream_tls_ca).resolve())}}}
        tls: dict[str, Any] = {"@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                               "common_tls_context": context}
        if options.upstream_sni:
            tls["sni"] = options.upstream_sni
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return cluster


def envoy_config(replicas: list[str], listen: str, options: EnvoyOptions | None = None) -> dict[str, Any]:
    """The bootstrap configuration routing ``listen`` (HOST:PORT) to ``replicas`` (each HOST:PORT)."""
    options = options or EnvoyOptions()
    if not replicas:
        raise ValueError("an Envoy configuration needs at least one replica HOST:PORT")
    upstreams = [parse_host_port(r, "replica") for r in replicas]
    if len(set(upstreams)) != len(upstreams):
        raise ValueError(f"replicas {replicas}: an address is given twice")
    config: dict[str, Any] = {"static_resources": {
        "listeners": [_listener(parse_host_port(listen, "listen address"), options)],
        "clusters": [_cluster(upstreams, options)]}}
    if options.admin is not None:
        config["admin"] = {"address": _socket_address(*parse_host_port(options.admin, "admin address",
                                                                       allow_zero=True))}
    return config


def write_envoy_config(path: str | Path, replicas: list[str], listen: str, options: EnvoyOptions | None = None) -> Path:
    """Write :func:`envoy_config` to ``path`` as JSON (which Envoy reads as YAML too); return the path."""
    path = Path(path)
    path.write_text(json.dumps(envoy_config(replicas, listen, options), indent=2) + "\n")
    return path
