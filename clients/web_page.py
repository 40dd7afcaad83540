"""``rnnpolicy web``: serve the browser page (``clients/web/``) that watches an exported policy act.

The page runs ``model.onnx`` in the browser with onnxruntime-web (single-threaded wasm, so no
cross-origin isolation headers are needed) on a JavaScript port of a built-in memory task, and
draws the task and the hidden state step by step. This module only serves files, torch-free:

- ``/`` and the page's own files, from the ``web`` folder beside this module (package data);
- ``/export/model.onnx`` and ``/export/spec.json`` from the export directory, nothing else of it;
- ``/ort/...``: onnxruntime-web's ``dist`` files, from an npm install (see :func:`find_ort_dist`);
- ``/config.json``: the task, the first episode's seed and the playing speed.

Every served path is fixed when the server starts; any other path is a 404.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rnnpolicy.spec import PolicySpec

__all__ = [
    "PORTED_ENV_IDS",
    "WEB_DIR",
    "WebPageConfig",
    "add_web_arguments",
    "create_web_server",
    "find_ort_dist",
    "ort_web_version",
    "run_web",
]

WEB_DIR = Path(__file__).resolve().parent / "web"
"""The page's static files, shipped in the package; ``node_modules`` appears here after ``npm ci``."""

PORTED_ENV_IDS: tuple[str, ...] = ("rnnpolicy/TMaze-v0", "rnnpolicy/MemoryGrid-v0")
"""The environments ``clients/web/envs.mjs`` ports to JavaScript."""

_ORT_ENTRY = "ort.wasm.min.js"
_EXPORT_FILES = ("model.onnx", "spec.json")
_PAGE_SUFFIXES = (".html", ".mjs", ".css")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
}


def add_web_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="an `rnnpolicy export` directory (model.onnx, spec.json)")
    parser.add_argument("--port", type=int, default=8000, help="local port to serve on; 0 picks a free one (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--env", choices=PORTED_ENV_IDS, default=None,
                        help="task to run (default: the one the policy was trained on, from spec.json)")
    parser.add_argument("--seed", type=int, default=0, help="the first episode's seed; later episodes continue "
                                                            "its generator, as gymnasium's reset() (default %(default)s)")
    parser.add_argument("--speed", type=float, default=4.0, help="steps per second when playing (default %(default)s)")
    parser.add_argument("--ort-dir", type=Path, default=None,
                        help="onnxruntime-web's dist folder, its package folder or a folder holding node_modules "
                             f"(default: {WEB_DIR / 'node_modules'}, then ./node_modules)")


def run_web(args: argparse.Namespace) -> int:
    config = WebPageConfig.from_export(Path(args.export_dir), env_id=args.env, seed=args.seed, speed=args.speed)
    ort_dist = find_ort_dist(args.ort_dir)
    try:
        server, port = create_web_server(config, ort_dist, host=args.host, port=args.port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                         f"(--port 0 picks a free port)") from None
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"rnnpolicy web: {config.env_id} with {config.export_dir} at http://{shown_host}:{port}/ "
          f"(onnxruntime-web from {ort_dist}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


@dataclass(frozen=True)
class WebPageConfig:
    """What the page runs: the export, the task, the first seed and the speed."""

    export_dir: Path
    spec: PolicySpec
    env_id: str
    """A gymnasium id from :data:`PORTED_ENV_IDS`."""
    seed: int = 0
    speed: float = 4.0
    """Steps per second while playing."""

    @classmethod
    def from_export(cls, export_dir: Path, env_id: str | None = None, seed: int = 0, speed: float = 4.0) -> WebPageConfig:
        """Read and check ``export_dir``; ``ValueError`` naming what does not fit the page."""
        if not export_dir.is_dir():
            raise ValueError(f"export directory {export_dir} does not exist (expected the --out of rnnpolicy export)")
        missing = [name for name in _EXPORT_FILES if not (export_dir / name).is_file()]
        if missing:
            raise ValueError(f"{export_dir} has no {' or '.join(missing)} (expected the --out of rnnpolicy export)")
        spec = PolicySpec.from_json((export_dir / "spec.json").read_text())
        env_id = env_id or spec.env_id
        if env_id not in PORTED_ENV_IDS:
            raise ValueError(
                f"the page runs {' or '.join(PORTED_ENV_IDS)}, and this policy was trained on {spec.env_id or 'an unnamed env'!r}; "
                f"pass --env to run one of them with a policy of the same observation and action sizes"
            )
        if seed < 0:
            raise ValueError(f"--seed must be >= 0, got {seed}")
        if not speed > 0:
            raise ValueError(f"--speed must be > 0 steps per second, got {speed}")
        _check_fits(spec, env_id)
        return cls(export_dir.resolve(), spec, env_id, seed, speed)

    def to_json(self) -> bytes:
        return json.dumps({
            "env_id": self.env_id,
            "seed": self.seed,
            "speed": self.speed,
            "title": self.export_dir.name if self.export_dir.name != "export" else self.export_dir.parent.name,
            "model_url": "export/model.onnx",
            "spec_url": "export/spec.json",
        }).encode()


def _check_fits(spec: PolicySpec, env_id: str) -> None:
    from rnnpolicy.envs import check_fits, make_env

    if not spec.action.is_discrete:
        raise ValueError(f"the page runs policies with discrete actions, this one chooses {spec.action.describe()}")
    env = make_env(env_id)
    try:
        check_fits(spec, env, env_id)
    finally:
        env.close()


def ort_web_version(web_dir: Path = WEB_DIR) -> str:
    """The onnxruntime-web version ``clients/web/package.json`` pins."""
    return json.loads((web_dir / "package.json").read_text())["dependencies"]["onnxruntime-web"]


def find_ort_dist(ort_dir: Path | None = None, search: tuple[Path, ...] | None = None) -> Path:
    """The folder holding onnxruntime-web's ``dist/ort.wasm.min.js``.

    ``ort_dir`` may be that folder, the ``onnxruntime-web`` package folder, or a folder holding
    ``node_modules``; without it, ``search`` (default: the page's folder, then the current
    directory) is tried for ``node_modules/onnxruntime-web/dist``. ``ValueError`` says which npm
    command installs it; a version other than the pinned one is used with a warning.
    """
    if ort_dir is not None:
        candidates = [ort_dir, ort_dir / "dist", ort_dir / "node_modules" / "onnxruntime-web" / "dist"]
    else:
        roots = search if search is not None else (WEB_DIR, Path.cwd())
        candidates = [root / "node_modules" / "onnxruntime-web" / "dist" for root in roots]
    for dist in candidates:
        if (dist / _ORT_ENTRY).is_file():
            _warn_if_other_version(dist)
            return dist.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise ValueError(
        f"onnxruntime-web is not installed (no {_ORT_ENTRY} in {looked}); install the pinned version with "
        f"`npm ci --prefix {WEB_DIR} --no-audit --no-fund` (needs Node.js and npm), or pass --ort-dir"
    )


def _warn_if_other_version(dist: Path) -> None:
    try:
        found = json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return
    pinned = ort_web_version()
    if found != pinned:
        print(f"rnnpolicy web: warning: onnxruntime-web {found} in {dist.parent}, the page is tested with {pinned}",
              file=sys.stderr)


def _routes(config: WebPageConfig, ort_dist: Path, web_dir: Path) -> dict[str, Path | bytes]:
    """URL path -> file (or content): every path the server answers, fixed at start."""
    routes: dict[str, Path | bytes] = {"/": web_dir / "index.html", "/config.json": config.to_json()}
    for path in sorted(web_dir.iterdir()):
        if path.is_file() and path.suffix in _PAGE_SUFFIXES:
            routes[f"/{path.name}"] = path
    for name in _EXPORT_FILES:
        routes[f"/export/{name}"] = config.export_dir / name
    for path in sorted(ort_dist.iterdir()):
        if path.is_file():
            routes[f"/ort/{path.name}"] = path
    return routes


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def create_web_server(config: WebPageConfig, ort_dist: Path, host: str = "127.0.0.1", port: int = 0,
                      web_dir: Path = WEB_DIR) -> tuple[ThreadingHTTPServer, int]:
    """An HTTP server for the page, bound (``port`` 0: a free one) but not yet serving: ``(server, port)``.

    Call ``serve_forever()`` (in a thread for tests), then ``shutdown()`` and ``server_close()``.
    """
    routes = _routes(config, ort_dist, web_dir)

    class Handler(BaseHTTPRequestHandler):
        server_version = "rnnpolicy-web"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            target = routes.get(self.path.split("?", 1)[0].split("#", 1)[0])
            if target is None:
                self.send_error(HTTPStatus.NOT_FOUND, "not part of the page")
                return
            if isinstance(target, bytes):
                body, suffix = target, ".json"
            else:
                try:
                    body = target.read_bytes()
                except OSError as exc:
                    self.send_error(HTTPStatus.NOT_FOUND, f"cannot read {target.name}: {exc.strerror}")
                    return
                suffix = target.suffix
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", _CONTENT_TYPES.get(suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # quiet on success; failures are still logged (send_error -> log_error)

    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    return server, server.server_address[1]
