"""``export_checkpoint``: a training checkpoint to ``model.onnx``, ``model.pt2``, ``spec.json`` and ``verify.json``.

Optionally also ``model.aoti.pt2`` (an AOTInductor package for C++) and ``model.ts``
(TorchScript, deprecated by PyTorch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnnpolicy.export.interface import (
    AOTI_FILE,
    DEFAULT_OPSET,
    ONNX_FILE,
    PROGRAM_FILE,
    SPEC_FILE,
    TORCHSCRIPT_FILE,
    VERIFY_FILE,
    graph_inputs,
    graph_outputs,
)
from rnnpolicy.export.onnx_export import export_onnx
from rnnpolicy.export.pt2 import compile_aoti, export_program
from rnnpolicy.export.step_module import step_module
from rnnpolicy.export.torchscript import export_torchscript
from rnnpolicy.export.verify import VerifyReport, verify_export, write_unverified
from rnnpolicy.spec import PolicySpec
from rnnpolicy.train.checkpoint import load_checkpoint

__all__ = ["ExportReport", "export_checkpoint"]


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how it verified."""

    out_dir: Path
    spec: PolicySpec
    opset: int
    seconds: float
    """Time to write the model files, verification and the AOTInductor compile excluded."""
    aot_seconds: float | None
    """Time of the AOTInductor compile; ``None`` when exported without ``aot=True``."""
    verify: VerifyReport | None
    """The parity report; ``None`` when exported with ``verify=False``."""
    files: tuple[Path, ...] = ()
    """Every file written, in the order written (``verify.json`` last)."""

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / ONNX_FILE

    @property
    def program_path(self) -> Path:
        return self.out_dir / PROGRAM_FILE

    @property
    def aoti_path(self) -> Path:
        return self.out_dir / AOTI_FILE

    @property
    def torchscript_path(self) -> Path:
        return self.out_dir / TORCHSCRIPT_FILE

    @property
    def spec_path(self) -> Path:
        return self.out_dir / SPEC_FILE

    @property
    def verify_path(self) -> Path:
        return self.out_dir / VERIFY_FILE

    def summary(self) -> str:
        """The lines ``rnnpolicy export`` prints: interface, file sizes, parity."""
        spec = self.spec
        aot = "" if self.aot_seconds is None else f", AOTInductor compile {self.aot_seconds:.1f} s"
        lines = [
            f"exported {'Q-network' if spec.kind == 'q' else 'actor-critic'} ({spec.cell}, {spec.num_layers}x{spec.hidden_size}, "
            f"{spec.num_cores} core(s)) to {self.out_dir} in {self.seconds:.1f} s{aot} (ONNX opset {self.opset})",
            "inputs:  " + "; ".join(t.describe() for t in graph_inputs(spec)),
            "outputs: " + "; ".join(t.describe() for t in graph_outputs(spec)),
            "files:   " + ", ".join(f"{p.name} {_size(p.stat().st_size)}" for p in self.files),
            "verify:  " + (self.verify.summary() if self.verify else "skipped (--no-verify); run `rnnpolicy verify`"),
        ]
        if self.torchscript_path in self.files:
            lines.append("note:    model.ts is TorchScript, which PyTorch has deprecated: prefer model.pt2 (torch.export)")
        return "\n".join(lines)


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    opset: int | None = None,
    verify: bool = True,
    aot: bool = False,
    torchscript: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a checkpoint to ``out_dir`` (created if needed) and, by default, verify parity.

    Always writes ``model.onnx``, ``model.pt2`` (``torch.export``) and ``spec.json``; ``aot=True``
    adds ``model.aoti.pt2`` (AOTInductor, for C++; about 30 s), ``torchscript=True`` adds
    ``model.ts`` (deprecated). Optional files left in ``out_dir`` by an earlier export and not
    written this time are removed, so that ``verify`` never checks a stale file. ``progress``
    receives a line before the AOTInductor compile.

    A failed verification does not raise: check ``report.verify.passed`` (the CLI exits 1).
    Bad input (missing or foreign checkpoint, unsupported opset, no C++ compiler for ``aot``)
    raises ``ValueError``.
    """
    checkpoint_path = Path(checkpoint_path)
    out_dir = Path(out_dir)
    opset = DEFAULT_OPSET if opset is None else opset
    say = progress or (lambda line: None)
    start = time.perf_counter()
    checkpoint = load_checkpoint(checkpoint_path)
    step = step_module(checkpoint.build())
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [export_onnx(step, out_dir / ONNX_FILE, opset)]
    program = export_program(step, out_dir / PROGRAM_FILE)
    files.append(out_dir / PROGRAM_FILE)
    if torchscript:
        files.append(export_torchscript(step, out_dir / TORCHSCRIPT_FILE))
    (out_dir / SPEC_FILE).write_text(checkpoint.spec.to_json() + "\n")
    files.append(out_dir / SPEC_FILE)
    seconds = time.perf_counter() - start
    aot_seconds = None
    if aot:
        say(f"compiling {AOTI_FILE} with AOTInductor (a C++ build, about 30-60 s)...")
        started = time.perf_counter()
        files.append(compile_aoti(program, checkpoint.spec, out_dir / AOTI_FILE))
        aot_seconds = time.perf_counter() - started
    for stale in (out_dir / AOTI_FILE, out_dir / TORCHSCRIPT_FILE):
        if stale not in files:
            stale.unlink(missing_ok=True)
    if verify:
        report = verify_export(out_dir, checkpoint_path)
    else:
        write_unverified(out_dir, checkpoint_path)
        report = None
    files.append(out_dir / VERIFY_FILE)
    return ExportReport(out_dir, checkpoint.spec, opset, seconds, aot_seconds, report, tuple(files))


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
