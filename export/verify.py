"""Parity of an export directory: eager PyTorch vs every exported file, over the same long rollouts.

The runtimes: onnxruntime (``model.onnx``), the ``torch.export`` program (``model.pt2``) and,
where the export wrote them, the AOTInductor package (``model.aoti.pt2``) and TorchScript
(``model.ts``). Each carries its own state between calls (as a deployed client would),
episodes start at random steps in the middle of the rollouts, and every output and the state
are compared with the eager checkpoint model at every step.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rnnpolicy.export.interface import AOTI_FILE, ONNX_FILE, PROGRAM_FILE, SPEC_FILE, TORCHSCRIPT_FILE, VERIFY_FILE
from rnnpolicy.export.pt2 import load_aoti, load_program
from rnnpolicy.export.runtime import load_onnx_policy, zero_state
from rnnpolicy.export.step_module import step_module
from rnnpolicy.export.torchscript import load_torchscript
from rnnpolicy.spec import ACTION, PolicySpec
from rnnpolicy.train.checkpoint import load_checkpoint

__all__ = [
    "RuntimeParity",
    "VerifyReport",
    "file_sha256",
    "read_spec_file",
    "verify_export",
    "write_unverified",
]

Runtime = Callable[[list[np.ndarray]], list[np.ndarray]]
"""One step of a runtime: the inputs in ``spec.input_names`` order to the outputs in ``spec.output_names`` order."""


@dataclass
class RuntimeParity:
    """How far one runtime strayed from eager PyTorch over all rollouts."""

    max_abs_diff: dict[str, float]
    """Largest absolute difference of each output (the state included), by output name."""
    action_mismatches: int = 0
    """Rows whose action differs (discrete; any entry for multi-discrete/binary) or differs by more than the
    tolerance (continuous)."""


@dataclass
class VerifyReport:
    """The parity report written to ``verify.json``."""

    checkpoint: str
    """Absolute path of the checkpoint the eager reference was built from."""
    checkpoint_sha256: str
    steps: int
    """Steps per rollout."""
    batch_sizes: tuple[int, ...]
    tolerance: float
    """Largest absolute difference of any output that still passes."""
    episode_starts: int
    """Episode starts in the middle of the rollouts (after step 0), over all batch sizes."""
    runtimes: dict[str, RuntimeParity] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        """One line per violation; empty when the export passes."""
        out = []
        for runtime, parity in self.runtimes.items():
            for name, diff in parity.max_abs_diff.items():
                if not diff <= self.tolerance:  # also catches NaN
                    out.append(f"{runtime}: {name} differs from PyTorch by {diff:.3g} > {self.tolerance:g}")
            if parity.action_mismatches:
                out.append(f"{runtime}: {parity.action_mismatches} actions differ from PyTorch")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def max_diff(self, runtime: str) -> float:
        return max(self.runtimes[runtime].max_abs_diff.values())

    def summary(self) -> str:
        """One line: pass or fail, what was run, the largest differences."""
        diffs = ", ".join(f"{r} {self.max_diff(r):.2g}" for r in self.runtimes)
        head = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        sizes = ", ".join(str(b) for b in self.batch_sizes)
        return (
            f"{head} ({self.steps} steps x batch {sizes}, {self.episode_starts} mid-rollout episode starts; "
            f"max |diff| vs PyTorch: {diffs}; tolerance {self.tolerance:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"status": "passed" if self.passed else "failed", "failures": self.failures, **asdict(self)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_unverified(export_dir: Path, checkpoint: Path) -> Path:
    """``verify.json`` for an export made with ``--no-verify``: records the checkpoint for a later ``rnnpolicy verify``."""
    checkpoint = checkpoint.resolve()
    record = {"status": "skipped", "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint)}
    path = export_dir / VERIFY_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_spec_file(path: Path) -> PolicySpec:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist: is {str(path.parent)!r} an export directory?")
    try:
        return PolicySpec.from_json(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None


def verify_export(
    export_dir: str | Path,
    checkpoint: str | Path | None = None,
    steps: int = 200,
    batch_sizes: tuple[int, ...] = (1, 3, 64),
    tolerance: float = 1e-4,
    seed: int = 0,
) -> VerifyReport:
    """Replay random rollouts through every exported file's runtime, write ``verify.json`` and return the report.

    ``checkpoint`` defaults to the one recorded in ``verify.json`` at export time, which must be
    unchanged since (its sha256 is checked); pass it explicitly to compare against another file.
    Mismatched or unreadable files raise ``ValueError`` naming them.
    """
    export_dir = Path(export_dir)
    if steps < 2 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"need steps >= 2 and batch sizes >= 1, got steps={steps}, batch_sizes={batch_sizes}")
    checkpoint_path = _resolve_checkpoint(export_dir, checkpoint)
    spec = read_spec_file(export_dir / SPEC_FILE)
    reference = load_checkpoint(checkpoint_path)
    if reference.spec != spec:
        raise ValueError(
            f"{str(checkpoint_path)!r} does not match {str(export_dir / SPEC_FILE)!r}: they describe different policies"
        )
    runtimes = _load_runtimes(export_dir, spec)
    eager = step_module(reference.build())

    report = VerifyReport(
        checkpoint=str(checkpoint_path),
        checkpoint_sha256=file_sha256(checkpoint_path),
        steps=steps,
        batch_sizes=tuple(batch_sizes),
        tolerance=tolerance,
        episode_starts=0,
        runtimes={r: RuntimeParity({name: 0.0 for name in spec.output_names}) for r in runtimes},
    )
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                report.episode_starts += _rollout(spec, eager, runtimes, batch, steps, seed + batch, report)
    finally:
        torch.set_num_threads(threads)
    report.seconds = time.perf_counter() - start
    (export_dir / VERIFY_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _resolve_checkpoint(export_dir: Path, checkpoint: str | Path | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint).resolve()
    record_path = export_dir / VERIFY_FILE
    try:
        record = json.loads(record_path.read_text())
        path = Path(record["checkpoint"])
        recorded_hash = record["checkpoint_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"{str(record_path)!r} is missing or records no checkpoint; pass the checkpoint explicitly (--checkpoint PATH)"
        ) from None
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} recorded in {str(record_path)!r} no longer exists; pass --checkpoint PATH")
    if file_sha256(path) != recorded_hash:
        raise ValueError(
            f"checkpoint {str(path)!r} has changed since this export (sha256 differs from {str(record_path)!r}); "
            f"re-export it, or pass --checkpoint PATH to compare against it anyway"
        )
    return path


def _load_runtimes(export_dir: Path, spec: PolicySpec) -> dict[str, Runtime]:
    """A step function per exported file: ``model.onnx`` must exist, the others are checked where present.

    An older export directory (``model.ts``, no ``model.pt2``) still verifies. Each file's
    embedded spec must equal ``spec.json``'s.
    """
    session, onnx_spec = load_onnx_policy(export_dir / ONNX_FILE)
    loaded: dict[str, tuple[str, Runtime, PolicySpec]] = {
        "onnxruntime": (ONNX_FILE, lambda inputs: session.run(None, dict(zip(spec.input_names, inputs))), onnx_spec),
    }
    if (export_dir / PROGRAM_FILE).is_file():
        program, program_spec = load_program(export_dir / PROGRAM_FILE)
        loaded["torch.export"] = (PROGRAM_FILE, _torch_runtime(program), program_spec)
    if (export_dir / AOTI_FILE).is_file():
        compiled, aoti_spec = load_aoti(export_dir / AOTI_FILE)
        loaded["aotinductor"] = (AOTI_FILE, _torch_runtime(compiled), aoti_spec)
    if (export_dir / TORCHSCRIPT_FILE).is_file():
        scripted, ts_spec = load_torchscript(export_dir / TORCHSCRIPT_FILE)
        loaded["torchscript"] = (TORCHSCRIPT_FILE, _torch_runtime(scripted), ts_spec)
    for file, _, other in loaded.values():
        if other != spec:
            raise ValueError(f"{file!r} does not match {str(export_dir / SPEC_FILE)!r}: they describe different policies")
    return {name: run for name, (_, run, _) in loaded.items()}


def _torch_runtime(module: Callable[..., Any]) -> Runtime:
    return lambda inputs: [o.numpy() for o in module(*map(torch.from_numpy, inputs))]


def _rollout(spec: PolicySpec, eager: torch.nn.Module, runtimes: dict[str, Runtime],
             batch: int, steps: int, seed: int, report: VerifyReport) -> int:
    """One rollout of ``steps`` steps at ``batch`` rows; accumulates into ``report``, returns mid-rollout starts."""
    rng = np.random.default_rng(seed)
    obs = 2.0 * rng.standard_normal((steps, batch, spec.obs_dim), dtype=np.float32)  # (T, B, F)
    if spec.image is not None and spec.image.codes:
        obs = rng.integers(-1, spec.image.codes + 1, size=obs.shape).astype(np.float32)  # codes, and one out of range each side
    elif spec.image is not None and spec.image.scale != 1.0:
        obs = rng.integers(0, 256, size=obs.shape).astype(np.float32)  # uint8 pixel values, as environments give them
    starts = rng.random((steps, batch)) < 0.05  # (T, B)
    starts[0] = True
    starts[rng.integers(1, steps, size=batch), np.arange(batch)] = True  # every row restarts mid-rollout
    n_state = len(spec.state_tensors)
    action_index = spec.output_names.index(ACTION)
    reference = _torch_runtime(eager)
    states = {r: list(zero_state(spec, batch).values()) for r in ("eager", *runtimes)}
    for t in range(steps):
        inputs = [obs[t], starts[t].astype(np.float32)]
        outputs = {"eager": reference(inputs + states["eager"])}
        outputs.update({name: run(inputs + states[name]) for name, run in runtimes.items()})
        for runtime, outs in outputs.items():
            states[runtime] = list(outs[-n_state:])
        for runtime in runtimes:
            parity = report.runtimes[runtime]
            for name, ref, out in zip(spec.output_names, outputs["eager"], outputs[runtime]):
                diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
                parity.max_abs_diff[name] = float(np.maximum(parity.max_abs_diff[name], diff))  # NaN sticks
            ref_action, action = outputs["eager"][action_index], outputs[runtime][action_index]
            if spec.action.is_discrete:
                parity.action_mismatches += int(np.sum(ref_action != action))
            elif spec.action.is_factored:
                parity.action_mismatches += int(np.sum(np.any(ref_action != action, axis=-1)))
            else:
                parity.action_mismatches += int(np.sum(np.any(np.abs(ref_action - action) > report.tolerance, axis=-1)))
    return int(starts[1:].sum())
