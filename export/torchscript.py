"""Write and read the step module as TorchScript ``model.ts``, with the spec as extra file ``spec.json``.

Opt-in (``rnnpolicy export --torchscript``): PyTorch deprecates TorchScript in favour of
``torch.export`` (``model.pt2``) and AOTInductor (``model.aoti.pt2`` for C++); this stays
for existing LibTorch users.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rnnpolicy.export.interface import SPEC_FILE
from rnnpolicy.export.step_module import RNN_SHAPE_CHECK_WARNING, PolicyStep, example_inputs
from rnnpolicy.spec import PolicySpec

__all__ = ["export_torchscript", "load_torchscript"]

_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"
"""torch.jit's own deprecation notice: the user asked for TorchScript and the export summary says it is deprecated."""


def export_torchscript(step: PolicyStep, path: str | Path) -> Path:
    """Trace ``step`` at a batch of 3 and save it with the spec embedded; the batch axis stays free."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=RNN_SHAPE_CHECK_WARNING, category=torch.jit.TracerWarning)
        traced = torch.jit.trace(step, example_inputs(step.spec), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={SPEC_FILE: step.spec.to_json()})
    return path


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, PolicySpec]:
    """Load ``model.ts`` and its embedded spec; ``ValueError`` naming the file if either is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"TorchScript model {str(path)!r} does not exist")
    extra = {SPEC_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError or zipfile errors for damaged files
        raise ValueError(f"{str(path)!r} is not a loadable TorchScript model: {exc}") from None
    if not extra[SPEC_FILE]:
        raise ValueError(f"{str(path)!r} has no {SPEC_FILE!r} extra file: not exported by rnnpolicy")
    try:
        spec = PolicySpec.from_json(extra[SPEC_FILE])
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None
    return module.eval(), spec
