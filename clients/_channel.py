"""Client channels: plaintext or TLS (optionally with a client certificate), and a bearer token on every call.

The token travels as gRPC metadata ``authorization: Bearer <token>``, added by a client interceptor (sync) or per
call (asyncio). Not ``grpc.access_token_call_credentials``: gRPC Python runs such call credentials' metadata
plugin on a new thread for every call (a cost on a latency-sensitive step path), and call credentials need a
secure channel, while a token over plaintext to a loopback or development server is legitimate. A token over
plaintext to any other host warns (``UserWarning``): anyone on the path can read and replay it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import warnings
from pathlib import Path
from typing import Any, Sequence

import grpc

__all__ = ["TOKEN_ENV", "check_token", "is_loopback_target", "open_aio_channel", "open_channel", "read_token_file",
           "resolve_token", "ssl_credentials", "token_metadata", "with_token"]

TOKEN_ENV = "RNNPOLICY_TOKEN"
"""Environment variable ``rnnpolicy play`` reads the token from when neither --token-file nor --token is given."""

_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def check_token(token: str, source: str = "token") -> str:
    """``token`` stripped of surrounding whitespace; ``ValueError`` (naming ``source``, never the token) if unusable."""
    token = token.strip()
    if not token:
        raise ValueError(f"{source} is empty")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"{source} has characters outside the bearer-token alphabet A-Z a-z 0-9 - . _ ~ + / "
                         f"(and trailing '='); expected the token alone, on one line")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in ``path``: the file's only non-blank, non-comment line; ``ValueError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise ValueError(f"token file {path}: expected exactly one line holding the token, found {len(lines)} "
                         f"(a client token file holds the token alone, not the server's 'PRINCIPAL TOKEN' lines)")
    return check_token(lines[0], f"token file {path}")


def resolve_token(token: str | None = None, token_file: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file``, else ``token``, else ``$RNNPOLICY_TOKEN``; ``None`` when none is set."""
    if token is not None and token_file is not None:
        raise ValueError("give the token once: --token-file or --token, not both")
    if token_file is not None:
        return read_token_file(token_file)
    if token is not None:
        return check_token(token, "--token")
    value = (os.environ if environ is None else environ).get(TOKEN_ENV)
    return check_token(value, f"${TOKEN_ENV}") if value else None


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def ssl_credentials(tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                    tls_key: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials: ``tls_ca`` to verify the server (``None``: the system's roots), and a client
    certificate ``tls_cert`` with its key ``tls_key`` for mutual TLS; ``ValueError`` naming a bad file."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs its key: give both tls_cert and tls_key (--tls-cert, --tls-key)")
    ca = _read(tls_ca, "TLS CA") if tls_ca is not None else None
    if ca is not None:
        try:
            ssl.create_default_context(cadata=ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError):
            raise ValueError(f"TLS CA {tls_ca} holds no PEM certificate") from None
    cert = key = None
    if tls_cert is not None and tls_key is not None:
        cert, key = _read(tls_cert, "TLS certificate"), _read(tls_key, "TLS key")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(tls_cert), str(tls_key), password=_no_password)
        except (ssl.SSLError, ValueError) as exc:
            why = "does not belong to it" if "KEY_VALUES_MISMATCH" in str(exc) else f"cannot be loaded with it ({exc})"
            raise ValueError(f"TLS certificate {tls_cert} and key {tls_key}: the key {why} "
                             f"(expected PEM files, the key unencrypted)") from None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine (a loopback address, ``localhost`` or a unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = re.sub(r"^(dns:(//[^/]*)?/*|ipv4:|ipv6:)", "", target)
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wants_tls(tls: bool, tls_ca: Any, tls_cert: Any, tls_key: Any) -> bool:
    return bool(tls) or any(v is not None for v in (tls_ca, tls_cert, tls_key))


def _warn_plaintext_token(target: str, token: str | None, secure: bool) -> None:
    if token is not None and not secure and not is_loopback_target(target):
        warnings.warn(f"sending a bearer token to {target} over plaintext: anyone on the path can read and replay it; "
                      f"use TLS (tls=True or tls_ca=...)", UserWarning, stacklevel=4)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._metadata = token_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, tuple(details.metadata or ()) + self._metadata,
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def open_channel(target: str, options: Sequence[tuple[str, Any]] = (), *, token: str | None = None,
                 tls: bool = False, tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> grpc.Channel:
    """A sync channel to ``target``: TLS when ``tls`` or any ``tls_*`` file is given, ``token`` on every call."""
    secure = _wants_tls(tls, tls_ca, tls_cert, tls_key)
    if token is not None:
        token = check_token(token)
    _warn_plaintext_token(target, token, secure)
    if secure:
        channel = grpc.secure_channel(target, ssl_credentials(tls_ca, tls_cert, tls_key), options=list(options))
    else:
        channel = grpc.insecure_channel(target, options=list(options))
    return with_token(channel, token) if token is not None else channel


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` with ``authorization: Bearer <token>`` added to every call's metadata."""
    return grpc.intercept_channel(channel, _TokenInterceptor(check_token(token)))


def open_aio_channel(target: str, options: Sequence[tuple[str, Any]] = (), *, token: str | None = None,
                     tls: bool = False, tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                     tls_key: str | Path | None = None) -> grpc.aio.Channel:
    """The ``grpc.aio`` channel for ``open_channel``'s arguments; the caller sends :func:`token_metadata` per call
    (cheaper than an asyncio interceptor, which wraps every call in an extra task)."""
    secure = _wants_tls(tls, tls_ca, tls_cert, tls_key)
    if token is not None:
        check_token(token)
    _warn_plaintext_token(target, token, secure)
    if secure:
        return grpc.aio.secure_channel(target, ssl_credentials(tls_ca, tls_cert, tls_key), options=list(options))
    return grpc.aio.insecure_channel(target, options=list(options))
