"""The ``rnnpolicy`` command: ``train``, ``eval``, ``export``, ``verify``, ``serve``, ``cluster``, ``envoy-config``,
``play``, ``web``.

Only the chosen command's module is imported, so ``serve``, ``play`` and ``web`` run without torch.
Each command module provides ``add_<command>_arguments(parser, argv)`` (``argv``: the
arguments after the command name, for options that depend on others, such as ``--algo``)
and ``run_<command>(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command: (module, add-arguments function, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": ("rnnpolicy.train.cli", "add_train_arguments", "run_train", "train a recurrent agent (needs rnnpolicy[train])"),
    "eval": ("rnnpolicy.train.cli", "add_eval_arguments", "run_eval", "evaluate a checkpoint over episodes (needs rnnpolicy[train])"),
    "export": ("rnnpolicy.export.cli", "add_export_arguments", "run_export", "export a checkpoint to ONNX and torch.export (needs rnnpolicy[train])"),
    "verify": ("rnnpolicy.export.cli", "add_verify_arguments", "run_verify", "check an export against PyTorch (needs rnnpolicy[train])"),
    "serve": ("rnnpolicy.serve.cli", "add_serve_arguments", "run_serve", "serve exported models over gRPC with per-session state"),
    "cluster": ("rnnpolicy.serve.cluster_cli", "add_cluster_arguments", "run_cluster",
                "run redis-server, replicas and Envoy on this machine (needs rnnpolicy[cluster])"),
    "envoy-config": ("rnnpolicy.serve.cluster_cli", "add_envoy_config_arguments", "run_envoy_config",
                     "write an Envoy configuration routing by session to a list of replicas"),
    "play": ("rnnpolicy.clients.cli", "add_play_arguments", "run_play", "drive a gymnasium environment through a server"),
    "web": ("rnnpolicy.clients.web_page", "add_web_arguments", "run_web",
            "watch an exported policy act in a browser page, served on a local port"),
}

# Top-level modules that only the [train] extra installs.
_TRAIN_EXTRA = frozenset({"torch", "onnx", "onnxscript", "matplotlib", "tqdm"})


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from rnnpolicy import __version__

    parser = argparse.ArgumentParser(prog="rnnpolicy", description="Recurrent RL policies: train, export, serve.")
    parser.add_argument("--version", action="version", version=f"rnnpolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, add_fn, _, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            add = getattr(importlib.import_module(module), add_fn)
            add(command, argv[argv.index(name) + 1 :])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _build_parser(argv)
    except ModuleNotFoundError as exc:
        if exc.name not in _TRAIN_EXTRA:
            raise
        print(f"rnnpolicy: error: {exc}; training and export need the extra: pip install 'rnnpolicy[train]'", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    module, _, run_fn, _ = COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_fn)(args) or 0)
    except ValueError as exc:
        print(f"rnnpolicy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rnnpolicy {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnnpolicy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
