"""``export_checkpoint``: a training checkpoint to ``model.onnx``, ``model.ts``, ``spec.json`` and ``verify.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rnnpolicy.export.interface import (
    DEFAULT_OPSET,
    ONNX_FILE,
    SPEC_FILE,
    TORCHSCRIPT_FILE,
    VERIFY_FILE,
    graph_inputs,
    graph_outputs,
)
from rnnpolicy.export.onnx_export import export_onnx
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
    """Time to write the model files, verification excluded."""
    verify: VerifyReport | None
    """The parity report; ``None`` when exported with ``verify=False``."""

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / ONNX_FILE

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
        files = (self.onnx_path, self.torchscript_path, self.spec_path, self.verify_path)
        lines = [
            f"exported {spec.kind} policy ({spec.cell}, {spec.num_layers}x{spec.hidden_size}, "
            f"{spec.num_cores} core(s)) to {self.out_dir} in {self.seconds:.1f} s (ONNX opset {self.opset})",
            "inputs:  " + "; ".join(t.describe() for t in graph_inputs(spec)),
            "outputs: " + "; ".join(t.describe() for t in graph_outputs(spec)),
            "files:   " + ", ".join(f"{p.name} {_size(p.stat().st_size)}" for p in files),
            "verify:  " + (self.verify.summary() if self.verify else "skipped (--no-verify); run `rnnpolicy verify`"),
        ]
        return "\n".join(lines)


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    opset: int | None = None,
    verify: bool = True,
) -> ExportReport:
    """Export a checkpoint to ``out_dir`` (created if needed) and, by default, verify parity.

    A failed verification does not raise: check ``report.verify.passed`` (the CLI exits 1).
    Bad input (missing or foreign checkpoint, unsupported opset) raises ``ValueError``.
    """
    checkpoint_path = Path(checkpoint_path)
    out_dir = Path(out_dir)
    opset = DEFAULT_OPSET if opset is None else opset
    start = time.perf_counter()
    checkpoint = load_checkpoint(checkpoint_path)
    step = step_module(checkpoint.build())
    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(step, out_dir / ONNX_FILE, opset)
    export_torchscript(step, out_dir / TORCHSCRIPT_FILE)
    (out_dir / SPEC_FILE).write_text(checkpoint.spec.to_json() + "\n")
    seconds = time.perf_counter() - start
    if verify:
        report = verify_export(out_dir, checkpoint_path)
    else:
        write_unverified(out_dir, checkpoint_path)
        report = None
    return ExportReport(out_dir, checkpoint.spec, opset, seconds, report)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
