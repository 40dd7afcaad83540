"""``rnnpolicy export`` and ``rnnpolicy verify``: argument setup and runners for the top-level CLI.

Building the parsers imports no torch; the runners import the exporter when they run.
Bad input raises ``ValueError`` (the top-level CLI prints it as one error line, exit 2);
a failed parity check prints why and returns 1.
"""

from __future__ import annotations

import argparse
import sys

from rnnpolicy.export.interface import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

__all__ = ["add_export_arguments", "add_verify_arguments", "run_export", "run_verify"]


def add_export_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt written by `rnnpolicy train`")
    parser.add_argument(
        "--out", required=True, metavar="EXPORT_DIR",
        help="directory for model.onnx, model.pt2, spec.json and verify.json (created if needed)",
    )
    parser.add_argument(
        "--aot", action="store_true",
        help="also compile model.aoti.pt2, an AOTInductor package for C++ (clients/cpp; needs g++, about 30-60 s)",
    )
    parser.add_argument(
        "--torchscript", action="store_true",
        help="also write model.ts (TorchScript: deprecated by PyTorch, kept for existing LibTorch users)",
    )
    parser.add_argument(
        "--opset", type=int, default=None, metavar="N",
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--no-verify", action="store_true",
        help="skip the parity check of the exported files against PyTorch (run `rnnpolicy verify` later)",
    )


def run_export(args: argparse.Namespace) -> int:
    from rnnpolicy.export.exporter import export_checkpoint

    report = export_checkpoint(
        args.checkpoint, args.out, opset=args.opset, verify=not args.no_verify,
        aot=args.aot, torchscript=args.torchscript, progress=lambda line: print(line, flush=True),
    )
    print(report.summary())
    if report.verify is not None and not report.verify.passed:
        return _parity_failed("export", report.verify.failures, str(report.verify_path))
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="directory written by `rnnpolicy export`")
    parser.add_argument(
        "--checkpoint", default=None, metavar="PATH",
        help="PyTorch reference (default: the checkpoint recorded in EXPORT_DIR/verify.json, if unchanged)",
    )
    parser.add_argument("--steps", type=int, default=200, help="steps per rollout (default: 200)")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest absolute difference of any output that passes (default: 1e-4)",
    )


def run_verify(args: argparse.Namespace) -> int:
    from rnnpolicy.export.interface import VERIFY_FILE
    from rnnpolicy.export.verify import verify_export

    report = verify_export(args.export_dir, args.checkpoint, steps=args.steps, tolerance=args.tolerance)
    print("verify: " + report.summary())
    if not report.passed:
        return _parity_failed("verify", report.failures, f"{args.export_dir}/{VERIFY_FILE}")
    return 0


def _parity_failed(command: str, failures: list[str], report_path: str) -> int:
    print(
        f"rnnpolicy {command}: error: exported files disagree with the PyTorch model: "
        f"{'; '.join(failures)} (details in {report_path})",
        file=sys.stderr,
    )
    return 1
