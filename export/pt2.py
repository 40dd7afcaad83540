"""Write and read the step as a ``torch.export`` program (``model.pt2``) and an AOTInductor package.

``model.pt2`` is the step traced by ``torch.export.export`` with a dynamic batch axis, saved
with ``torch.export.save`` and the spec as extra file ``spec.json``: load it in Python with
``torch.export.load``. ``model.aoti.pt2`` is the same program compiled ahead of time by
AOTInductor (``torch._inductor.aoti_compile_and_package``, a C++ compile taking about half a
minute) into a shared library inside a package that C++ loads with
``torch::inductor::AOTIModelPackageLoader`` (``clients/cpp/``) and Python with
``torch._inductor.aoti_load_package``; its metadata holds the spec and, for C++ callers that
parse no JSON, the interface as plain strings (:func:`aoti_metadata`).

Both take the inputs of the ONNX graph in the same order, positionally, and return its outputs
in the same order (``spec.input_names``, ``spec.output_names``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rnnpolicy.export.interface import SPEC_FILE
from rnnpolicy.export.step_module import PolicyStep, example_inputs
from rnnpolicy.spec import SPEC_METADATA_KEY, PolicySpec

__all__ = [
    "aoti_metadata",
    "compile_aoti",
    "export_program",
    "load_aoti",
    "load_program",
]


_FLAT_WEIGHTS_WARNING = r"The tensor attributes .*_flat_weights\[0\].* were assigned during export"
"""``nn.LSTM``/``nn.GRU`` refresh their list of weight references in ``forward``: the same parameters, not new state."""
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"
"""Inductor's own imports still touch ``torch.jit``; nothing of this export uses TorchScript."""
_ONEDNN_TF32_WARNING = r"TF32 acceleration on top of oneDNN is available for Intel GPUs"
"""What ``torch.backends.mkldnn.flags`` says on every CPU-only torch when it restores the TF32 setting."""
_LEAF_SPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
"""torch 2.13's AOTInductor pickles its own pytree specs through a deprecated path; not ours to fix."""


def export_program(step: PolicyStep, path: str | Path) -> torch.export.ExportedProgram:
    """Trace ``step`` at a batch of 3 with ``torch.export`` (batch axis dynamic), save it to ``path`` with the spec."""
    spec = step.spec
    batch = torch.export.Dim("batch", min=1)
    # obs (B, F) and episode_start (B,) carry the batch first; the state tensors (layers, B, H) second.
    dynamic_shapes = {name: {1 if name in _state_names(spec) else 0: batch} for name in spec.input_names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FLAT_WEIGHTS_WARNING, category=UserWarning)
        program = torch.export.export(step, example_inputs(spec), dynamic_shapes=dynamic_shapes, strict=False)
    torch.export.save(program, str(path), extra_files={SPEC_FILE: spec.to_json()})
    return program


def load_program(path: str | Path) -> tuple[torch.nn.Module, PolicySpec]:
    """Load ``model.pt2`` as a callable module and its embedded spec; ``ValueError`` naming the file if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"torch.export program {str(path)!r} does not exist")
    extra = {SPEC_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError, KeyError or zipfile errors for foreign files
        raise ValueError(f"{str(path)!r} is not a loadable torch.export program: {exc}") from None
    if not extra[SPEC_FILE]:
        raise ValueError(f"{str(path)!r} has no {SPEC_FILE!r} extra file: not exported by rnnpolicy")
    return program.module().requires_grad_(False), _parse_spec(extra[SPEC_FILE], path)


def aoti_metadata(spec: PolicySpec) -> dict[str, str]:
    """The AOTInductor package's metadata: the spec as JSON, and the interface as plain strings for C++.

    ``rnnpolicy.input_names`` / ``rnnpolicy.output_names``: comma-separated, in call order;
    ``rnnpolicy.obs_dim``: an integer; ``rnnpolicy.state_shapes``: ``LAYERSxHIDDEN`` per state
    tensor, comma-separated, in input order (the batch axis sits between them).
    """
    return {
        SPEC_METADATA_KEY: spec.to_json(),
        "rnnpolicy.input_names": ",".join(spec.input_names),
        "rnnpolicy.output_names": ",".join(spec.output_names),
        "rnnpolicy.obs_dim": str(spec.obs_dim),
        "rnnpolicy.state_shapes": ",".join(f"{s.layers}x{s.hidden}" for s in spec.state_tensors),
    }


def compile_aoti(program: torch.export.ExportedProgram, spec: PolicySpec, path: str | Path) -> Path:
    """Compile ``program`` with AOTInductor for this machine's CPU into the package ``path`` (about 30 s).

    oneDNN is off while compiling: with it, Inductor lowers each LSTM/GRU layer to oneDNN's RNN
    primitive (``mkldnn_rnn_layer``), which costs most of a millisecond per one-step call (as in
    eager PyTorch); without it the cell becomes matrix products plus fused C++ kernels, 8-10x
    faster per step in ``clients/cpp`` (p50 of 3,000 steps of a 2x16 LSTM actor-critic: 0.9-1.1 ms
    against 88-118 us on the same loaded machine), with outputs within 1e-6 of each other.
    Needs a C++ compiler (``$CXX`` or ``g++``); ``ValueError`` saying so if there is none.
    """
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise ValueError(
            f"the AOTInductor package needs a C++ compiler, but {compiler!r} was not found "
            f"(install g++ or set $CXX), or export without --aot"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=_FLAT_WEIGHTS_WARNING, category=UserWarning)
        warnings.filterwarnings("ignore", message=_LEAF_SPEC_DEPRECATION, category=FutureWarning)
        warnings.filterwarnings("ignore", message=_ONEDNN_TF32_WARNING, category=UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs={"aot_inductor.metadata": aoti_metadata(spec)}
            )
    return Path(path)


def load_aoti(path: str | Path) -> tuple[Callable[..., Any], PolicySpec]:
    """Load ``model.aoti.pt2`` (a callable returning the outputs as a tuple) and its spec; ``ValueError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"AOTInductor package {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
            compiled = torch._inductor.aoti_load_package(str(path))
        metadata = compiled.get_metadata()
    except Exception as exc:  # RuntimeError from the C++ loader for damaged or foreign files
        raise ValueError(f"{str(path)!r} is not a loadable AOTInductor package: {exc}") from None
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(f"{str(path)!r} has no {SPEC_METADATA_KEY!r} metadata: not exported by rnnpolicy")
    return compiled, _parse_spec(metadata[SPEC_METADATA_KEY], path)


def _state_names(spec: PolicySpec) -> set[str]:
    return {s.name for s in spec.state_tensors}


def _parse_spec(text: str, path: Path) -> PolicySpec:
    try:
        return PolicySpec.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None
