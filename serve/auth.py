"""Serving security: TLS (optionally mutual) and bearer-token authentication with principals.

``Security(tls_cert=, tls_key=, tls_client_ca=, auth_tokens=)`` is what ``create_server(..., security=)`` and the
``rnnpolicy serve`` flags ``--tls-cert``, ``--tls-key``, ``--tls-client-ca`` and ``--auth-tokens`` configure.

TLS
    ``tls_cert``/``tls_key``: the server's PEM certificate chain and its unencrypted PEM private key. With
    ``tls_client_ca`` (PEM CA certificates) the server also requires every client to present a certificate signed
    by one of them (mutual TLS). Files are checked when the server is created: an unreadable file, a file without
    a certificate or key, or a key that does not belong to the certificate is a ``ValueError`` naming the file.

Tokens
    With ``auth_tokens`` every call must carry the gRPC metadata ``authorization: Bearer <token>``; a missing,
    malformed or unknown token is ``UNAUTHENTICATED`` (the message never says which tokens exist). The standard
    health service (``grpc.health.v1.Health``) is exempt so that load balancers can probe without a token;
    reflection and ``rnnpolicy.v1.PolicyService`` are not. Each token maps to a principal name, which
    :func:`principal_of` returns for the current call (the servicer uses it for session ownership).

Token file format (``--auth-tokens FILE``)::

    # one "PRINCIPAL TOKEN" per line; '#' starts a comment; blank lines are ignored
    game-server-1  3q2+7w-Hh3x0L9m1yZ4kVf8cQeTbA6s
    robot-lab      Yx81Hc0.nW4o~tZr5Kp2Lg7Dq9Vb3Fj
    robot-lab      8sK2mQ4vX0pL6tR1wY9zC3nB5hJ7dF   # a principal may have several tokens (rotation)

    PRINCIPAL  1-128 characters from A-Z a-z 0-9 . _ @ : / + - (starting with a letter or digit)
    TOKEN      at least 16 characters from A-Z a-z 0-9 - . _ ~ + / (then optional trailing '='),
               the RFC 6750 bearer-token alphabet; e.g. ``openssl rand -hex 32``

Malformed lines are a ``ValueError`` naming the file and line (never echoing a token); a token given twice and a
file without tokens are refused. Keep the file private (``chmod 600``): a world-readable file logs a warning.

Timing: the server keeps only the SHA-256 digest of each token and looks the presented token's digest up in a
dict. The work per call does not depend on how many tokens exist or on how much of a real token a guess shares;
what a lookup's timing could reveal at most is something about the SHA-256 of the guess, which tells an attacker
nothing about any valid token (no byte-by-byte ``==`` on secrets, so ``hmac.compare_digest`` is not needed).
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import ipaddress
import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import grpc

__all__ = [
    "HEALTH_METHOD_PREFIX",
    "TOKEN_FILE_HELP",
    "Security",
    "TokenAuthInterceptor",
    "is_loopback_host",
    "load_tokens",
    "parse_tokens",
    "principal_of",
]

_log = logging.getLogger("rnnpolicy.serve")

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
"""Methods under this prefix are served without a token (load-balancer probes)."""

TOKEN_FILE_HELP = ("one 'PRINCIPAL TOKEN' per line ('#' comments and blank lines ignored); calls must send gRPC "
                   "metadata 'authorization: Bearer TOKEN' (the health service is exempt)")
"""The token file format in one sentence, for ``--help``."""

_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MIN_TOKEN_CHARS = 16


# ---------------------------------------------------------------------------------------------- tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def parse_tokens(text: str, source: str = "<tokens>") -> dict[bytes, str]:
    """Parse a token file's text into ``{sha256(token): principal}``; ``ValueError`` naming ``source:line``."""
    digests: dict[bytes, str] = {}
    first_line: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()  # neither principals nor tokens may contain '#'
        if not line:
            continue
        fields = line.split()
        where = f"{source}:{number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'PRINCIPAL TOKEN' (two fields separated by spaces), "
                             f"got {len(fields)} field{'s' if len(fields) != 1 else ''}")
        principal, token = fields
        if not _PRINCIPAL.fullmatch(principal):
            raise ValueError(f"{where}: principal {principal[:140]!r} is not valid: expected 1-128 characters from "
                             f"A-Z a-z 0-9 . _ @ : / + - starting with a letter or digit")
        if not _TOKEN.fullmatch(token):  # the token itself is never echoed: it may be a real secret
            raise ValueError(f"{where}: the token of principal {principal!r} has characters outside the bearer-token "
                             f"alphabet A-Z a-z 0-9 - . _ ~ + / (and trailing '=')")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}: the token of principal {principal!r} has {len(token)} characters, expected "
                             f"at least {MIN_TOKEN_CHARS} (e.g. the output of 'openssl rand -hex 32')")
        digest = _digest(token)
        if digest in digests:
            raise ValueError(f"{where}: this token is already given on line {first_line[digest]} (principal "
                             f"{digests[digest]!r}); each token must be unique")
        digests[digest] = principal
        first_line[digest] = number
    if not digests:
        raise ValueError(f"{source}: no tokens; expected one 'PRINCIPAL TOKEN' per line")
    return digests


def load_tokens(path: str | Path) -> dict[bytes, str]:
    """Read an ``--auth-tokens`` file: ``{sha256(token): principal}``; ``ValueError`` naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except UnicodeDecodeError:
        raise ValueError(f"token file {path}: not UTF-8 text; expected one 'PRINCIPAL TOKEN' per line") from None
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    digests = parse_tokens(text, str(path))
    if os.name == "posix" and mode & 0o007:
        _log.warning("token file %s can be read by any user (mode %03o); chmod 600 it", path, mode & 0o777)
    _log.info("loaded %d token(s) for %d principal(s) from %s", len(digests), len(set(digests.values())), path)
    return digests


# ---------------------------------------------------------------------------------------------- principals

_call_principal: contextvars.ContextVar[str] = contextvars.ContextVar("rnnpolicy_principal", default="")


def principal_of(context: grpc.ServicerContext) -> str:
    """The authenticated principal of the current call; ``""`` when the server has no token auth.

    The interceptor sets it in a context variable around the handler, in the call's own task (for the
    whole of a stream).
    ``context`` is the call's context, kept in the signature for handlers that pass it along.
    """
    return _call_principal.get()


class _Throttle:
    """Logs at most one line per ``interval`` seconds, counting the lines it swallowed in between."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._swallowed = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._swallowed += 1
                return
            swallowed, self._swallowed, self._next = self._swallowed, 0, now + self.interval
        suffix = f" (and {swallowed} more refused call(s) not logged)" if swallowed else ""
        _log.warning(message + suffix, *args)


_MISSING = ("this server requires a token: send gRPC metadata 'authorization: Bearer <token>' "
            "(rnnpolicy play --token-file FILE, or PolicyClient(target, token=...))")
_MALFORMED = "malformed 'authorization' metadata: expected exactly one 'Bearer <token>'"
_INVALID = "the token is not valid for this server"


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a known bearer token (``UNAUTHENTICATED``) and records the caller's principal.

    ``digests`` is ``{sha256(token): principal}`` as :func:`load_tokens` returns it. Methods starting with one of
    ``exempt`` (default: the health service) pass without a token and have no principal.
    """

    def __init__(self, digests: Mapping[bytes, str], exempt: tuple[str, ...] = (HEALTH_METHOD_PREFIX,)) -> None:
        if not digests:
            raise ValueError("token authentication needs at least one token")
        self._digests = dict(digests)
        self._exempt = tuple(exempt)
        self._refusals = _Throttle()

    @property
    def principals(self) -> frozenset[str]:
        return frozenset(self._digests.values())

    def authenticate(self, metadata) -> tuple[str | None, str]:
        """``(principal, "")`` for a known token in ``metadata``, else ``(None, why)`` with the client's message."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            return None, _MISSING
        if len(values) != 1 or not isinstance(values[0], str):
            return None, _MALFORMED
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not token.isascii():
            return None, _MALFORMED
        principal = self._digests.get(_digest(token))
        return (principal, "") if principal is not None else (None, _INVALID)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        principal, why = self.authenticate(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: UNIMPLEMENTED as usual (the service definitions are public)
            return None
        if principal is None:
            return _with_behavior(handler, lambda behavior: _refusing(behavior, method, why, self._refusals))
        return _with_behavior(handler, lambda behavior: _authenticated(behavior, principal))


def _refusing(behavior: Callable, method: str, why: str, refusals: _Throttle) -> Callable:
    """A handler of ``behavior``'s kind (coroutine or async generator) that answers UNAUTHENTICATED."""
    def log(context) -> None:
        refusals.warning("refused %s from %s: %s", method, context.peer(), why.split(":")[0])

    if inspect.isasyncgenfunction(behavior):
        async def refuse_stream(request_or_iterator, context):
            log(context)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
            yield  # never reached: makes this an async generator like the behavior it replaces

        return refuse_stream
    _check_on_loop(behavior)

    async def refuse_async(request_or_iterator, context):
        log(context)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    return refuse_async


def _authenticated(behavior: Callable, principal: str) -> Callable:
    """``behavior`` (a coroutine or an async generator) with ``principal`` set for :func:`principal_of`."""
    if inspect.isasyncgenfunction(behavior):
        async def authenticated_stream(request_or_iterator, context):
            _call_principal.set(principal)  # the call's own task: nothing to restore when it ends
            async for response in behavior(request_or_iterator, context):
                yield response

        return authenticated_stream
    _check_on_loop(behavior)

    async def authenticated_async(request_or_iterator, context):
        token = _call_principal.set(principal)
        try:
            return await behavior(request_or_iterator, context)
        finally:
            _call_principal.reset(token)

    return authenticated_async


def _check_on_loop(behavior: Callable) -> None:
    """``TypeError`` unless ``behavior`` is a coroutine function (or an async generator, checked before)."""
    if not inspect.iscoroutinefunction(behavior):
        raise TypeError(f"{getattr(behavior, '__name__', behavior)} must be a coroutine or an async generator: "
                        f"every handler of this server runs on its event loop")


def _with_behavior(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    """``handler`` of the same kind and (de)serializers, its behavior replaced by ``wrap(behavior)``."""
    args = (handler.request_deserializer, handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), *args)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), *args)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), *args)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), *args)


# ---------------------------------------------------------------------------------------------- TLS


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _check_certificates(path: Path, data: bytes, what: str) -> None:
    """``data`` holds at least one PEM certificate; ``ValueError`` naming ``path`` otherwise."""
    try:
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise ValueError(f"{what} {path} holds no PEM certificate (expected '-----BEGIN CERTIFICATE-----')") from None


def _check_key_pair(cert: Path, key: Path, key_data: bytes) -> None:
    if b"PRIVATE KEY-----" not in key_data:
        raise ValueError(f"TLS key {key} holds no PEM private key (expected '-----BEGIN ... PRIVATE KEY-----')")
    if b"ENCRYPTED" in key_data:
        raise ValueError(f"TLS key {key} is encrypted; gRPC needs an unencrypted key (protect it with file permissions)")

    def no_password() -> bytes:
        raise ValueError("encrypted")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key), password=no_password)
    except (ssl.SSLError, ValueError) as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(f"TLS key {key} does not belong to the certificate {cert}") from None
        raise ValueError(f"TLS key {key} cannot be loaded with the certificate {cert} ({exc})") from None


def _check_pem_key_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """Read and check a certificate chain and its key; ``(cert_pem, key_pem)`` or ``ValueError`` naming the file."""
    cert_data = _read(cert, "TLS certificate")
    _check_certificates(cert, cert_data, "TLS certificate")
    key_data = _read(key, "TLS key")
    _check_key_pair(cert, key, key_data)
    return cert_data, key_data


# ---------------------------------------------------------------------------------------------- configuration


def is_loopback_host(host: str) -> bool:
    """Whether a bind address is local only (``localhost`` or a loopback IP): tokens in plaintext stay on the machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _path(value: str | Path | None) -> Path | None:
    return None if value is None or value == "" else Path(value)


@dataclass(frozen=True)
class Security:
    """TLS and token authentication for :func:`~rnnpolicy.serve.create_server` (all off by default).

    ``tls_cert`` and ``tls_key`` go together; ``tls_client_ca`` (mutual TLS) needs them. Nothing is read until
    :meth:`server_credentials` / :meth:`interceptor` (which ``create_server`` calls before loading any model).
    """

    tls_cert: Path | None = None
    """PEM certificate chain the server presents."""
    tls_key: Path | None = None
    """The certificate's unencrypted PEM private key."""
    tls_client_ca: Path | None = None
    """PEM CA certificate(s); clients must present a certificate signed by one (mutual TLS)."""
    auth_tokens: Path | None = None
    """Token file (module docstring); every call but health checks needs ``authorization: Bearer <token>``."""

    def __post_init__(self) -> None:
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens"):
            object.__setattr__(self, name, _path(getattr(self, name)))
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            raise ValueError(f"TLS needs both a certificate and its key: {given} is given but {missing} is not "
                             f"(--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS, --tls-client-ca) needs the server's own certificate and key "
                             "(--tls-cert and --tls-key)")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    @property
    def auth(self) -> bool:
        return self.auth_tokens is not None

    def describe(self) -> str:
        """``"tls=off|on|mutual auth=off|tokens"``, for the start-up log line."""
        tls = "mutual" if self.mutual_tls else "on" if self.tls else "off"
        return f"tls={tls} auth={'tokens' if self.auth else 'off'}"

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The port's credentials (``None``: plaintext); ``ValueError`` naming an unreadable or mismatched file."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        cert, key = _check_pem_key_pair(self.tls_cert, self.tls_key)
        ca = None
        if self.tls_client_ca is not None:
            ca = _read(self.tls_client_ca, "TLS client CA")
            _check_certificates(self.tls_client_ca, ca, "TLS client CA")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)

    def interceptor(self) -> TokenAuthInterceptor | None:
        """The token-checking interceptor (``None``: no token auth); ``ValueError`` naming the file and line."""
        return None if self.auth_tokens is None else TokenAuthInterceptor(load_tokens(self.auth_tokens))
