"""FusedAdam: the same steps as torch.optim.Adam(fused=True), without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from rnnpolicy.train.optim import FusedAdam


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3), torch.nn.Linear(8, 2))


def _loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    hidden = model[1](model[0](x))  # (B, 8)
    return model[2](hidden).pow(2).sum()  # model[3] gets no gradient


def test_steps_equal_torch_fused_adam_bit_for_bit_with_a_changing_lr_and_a_parameter_without_gradient() -> None:
    ours_model, torch_model = _model(), _model()
    ours = FusedAdam(ours_model.parameters(), lr=1e-2, eps=1e-5)
    reference = torch.optim.Adam(torch_model.parameters(), lr=1e-2, eps=1e-5, fused=True)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(4, 5, generator=g)
        ours.lr = reference.param_groups[0]["lr"] = 1e-2 * (1.0 - step / 6)
        for model, optimizer in ((ours_model, ours), (torch_model, reference)):
            optimizer.zero_grad()
            _loss(model, x).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
    for mine, theirs in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(ours_model[3].weight, _model()[3].weight)  # never stepped: no gradient


def test_zero_grad_drops_the_gradients_and_a_step_without_any_changes_nothing() -> None:
    model = _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    _loss(model, torch.ones(2, 5)).backward()
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(("kwargs", "message"), [(dict(lr=0.0), "learning rate must be > 0, got 0.0")])
def test_bad_arguments_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FusedAdam(_model().parameters(), **kwargs)


def test_no_trainable_parameters_is_refused() -> None:
    with pytest.raises(ValueError, match="no parameters that require a gradient"):
        FusedAdam(_model().requires_grad_(False).parameters(), lr=1e-3)


def test_a_short_training_run_never_imports_torch_dynamo(tmp_path) -> None:
    """torch.optim's optimizers import torch._dynamo (seconds) on construction; a run must not pay that."""
    script = textwrap.dedent(
        f"""
        import sys
        from rnnpolicy.train.api import train
        from rnnpolicy.train.config import TrainConfig
        for algo in ("ppo", "drqn"):
            train(TrainConfig(algo=algo, env="rnnpolicy/TMaze-v0", out=r"{tmp_path}/" + algo, total_steps=1024,
                              progress=False), {{"learning_starts": 256}} if algo == "drqn" else None)
        print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
