import dataclasses

import numpy as np
import pytest
import torch

from rnnpolicy import ActionSpec, ImageSpec, LmuSpec, ObsEncoding, ObsNormSpec, PolicySpec
from rnnpolicy.train.models import (
    ActorCritic, LegendreMemoryLayer, QNetwork, RecurrentCore, RecurrentState, build_model, initial_state,
    legendre_delay_system,
)

OBS_DIM = 4
DISCRETE = ActionSpec("discrete", n=3)
BOX = ActionSpec("box", shape=(2,), low=(-1.0, -1.0), high=(1.0, 1.0))
CASES = [
    ("q", DISCRETE, 1),
    ("policy", DISCRETE, 1),
    ("policy", DISCRETE, 2),
    ("policy", BOX, 1),
    ("policy", BOX, 2),
]


def make_spec(kind, action, cores, cell, layers=2, norm=False):
    return PolicySpec(
        kind=kind,
        cell=cell,
        num_layers=layers,
        hidden_size=8,
        obs_encoding=ObsEncoding.flat(OBS_DIM),
        action=action,
        num_cores=cores,
        obs_norm=ObsNormSpec(mean=(0.1,) * OBS_DIM, var=(2.0,) * OBS_DIM) if norm else None,
        lmu=LmuSpec(order=6, theta=5.0, memory_inputs=2) if cell == "lmu" else None,
    )


def sequence_outputs(model, obs, state, episode_start):
    """The head outputs of a whole-sequence call, packed like ``step``'s first output."""
    out = model(obs, state, episode_start)
    return out[0], out[-1]


@pytest.mark.parametrize("kind, action, cores", CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "lmu", "ff"])
@pytest.mark.parametrize("cell_math", [False, True], ids=["module-call", "cell-math"])
def test_step_by_step_equals_whole_sequence_with_episode_starts_inside(kind, action, cores, cell, cell_math):
    torch.manual_seed(0)
    spec = make_spec(kind, action, cores, cell, norm=True)
    model = build_model(spec)
    T, B = 9, 4
    obs = torch.randn(T, B, OBS_DIM)
    episode_start = torch.zeros(T, B)
    episode_start[0] = 1
    episode_start[4, 1] = 1
    episode_start[6, 3] = 1
    start = RecurrentState(*(torch.randn_like(t) if t is not None else None for t in initial_state(spec, B)))
    seq_head, seq_state = sequence_outputs(model, obs, start, episode_start)
    state, heads = start, []
    for t in range(T):
        outputs, state = model.step(obs[t], state, episode_start[t], cell_math=cell_math)
        heads.append(outputs[0])
    torch.testing.assert_close(torch.stack(heads), seq_head, rtol=0, atol=1e-5)
    torch.testing.assert_close(state.h, seq_state.h, rtol=0, atol=1e-5)
    if cell in ("lstm", "lmu"):
        torch.testing.assert_close(state.c, seq_state.c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "lmu"])
def test_padding_after_lengths_skips_the_image_encoders_and_leaves_the_real_steps_alone(cell, cores):
    torch.manual_seed(3)
    image = ImageSpec("hwc", 5, 5, 3, codes=8)
    spec = dataclasses.replace(make_spec("policy", DISCRETE, cores, cell), obs_encoding=ObsEncoding.flat(image.size), image=image)
    model = build_model(spec)
    T, B = 7, 3
    obs, episode_start = torch.randint(0, 8, (T, B, image.size)).float(), torch.zeros(T, B)
    episode_start[0] = 1
    lengths = torch.tensor([7, 2, 5])
    own = torch.arange(T)[:, None] < lengths[None, :]  # (T, B)
    encoded_rows = []
    encoders = [model.actor_encoder] + ([model.critic_encoder] if cores == 2 else [])
    hooks = [e.register_forward_hook(lambda module, args, out: encoded_rows.append(args[0].shape[0])) for e in encoders]
    padded = model(obs, initial_state(model.spec, B), episode_start, lengths)
    for hook in hooks:
        hook.remove()
    plain = model(obs, initial_state(model.spec, B), episode_start)
    assert encoded_rows == [int(lengths.sum())] * cores
    torch.testing.assert_close(padded[0][own], plain[0][own], rtol=0, atol=1e-6)  # logits
    torch.testing.assert_close(padded[2][own], plain[2][own], rtol=0, atol=1e-6)  # values
    assert not torch.allclose(padded[0][~own], plain[0][~own]), "the padding should have read zeros, not the observations"
    full = model(obs, initial_state(model.spec, B), episode_start, torch.full((B,), T))
    torch.testing.assert_close(full[0], plain[0], rtol=0, atol=0)


def test_a_vector_encoder_runs_on_the_padding_too():
    torch.manual_seed(3)
    model = build_model(make_spec("policy", DISCRETE, 1, "gru"))
    T, B = 7, 3
    obs, episode_start = torch.randn(T, B, OBS_DIM), torch.zeros(T, B)
    episode_start[0] = 1
    encoded_rows = []
    hook = model.actor_encoder.register_forward_hook(lambda module, args, out: encoded_rows.append(args[0].shape[:-1]))
    padded = model(obs, initial_state(model.spec, B), episode_start, torch.tensor([7, 2, 5]))
    hook.remove()
    assert encoded_rows == [(T, B)]
    torch.testing.assert_close(padded[0], model(obs, initial_state(model.spec, B), episode_start)[0], rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "lmu"])
def test_episode_start_equals_a_fresh_start(cell):
    torch.manual_seed(1)
    spec = make_spec("q", DISCRETE, 1, cell)
    model = QNetwork(spec)
    obs = torch.randn(5, 3, OBS_DIM)
    warm = RecurrentState(*(torch.randn_like(t) if t is not None else None for t in initial_state(spec, 3)))
    reset_out, reset_state = model(obs, warm, torch.ones(5, 3) * torch.tensor([1, 0, 0, 0, 0.0]).view(5, 1))
    fresh_out, fresh_state = model(obs, initial_state(spec, 3), torch.zeros(5, 3))
    torch.testing.assert_close(reset_out, fresh_out)
    torch.testing.assert_close(reset_state.h, fresh_state.h)
    # and without the reset the warm state changes the output
    warm_out, _ = model(obs, warm, torch.zeros(5, 3))
    assert not torch.allclose(warm_out, fresh_out)


def test_reset_only_touches_its_row():
    torch.manual_seed(2)
    spec = make_spec("policy", DISCRETE, 2, "lstm")
    model = ActorCritic(spec)
    state = RecurrentState(*(torch.randn_like(t) for t in initial_state(spec, 3)))
    obs = torch.randn(3, OBS_DIM)
    (logits_a, *_), _ = model.step(obs, state, torch.tensor([0.0, 1.0, 0.0]))
    (logits_b, *_), _ = model.step(obs, state, torch.zeros(3))
    torch.testing.assert_close(logits_a[[0, 2]], logits_b[[0, 2]])
    assert not torch.allclose(logits_a[1], logits_b[1])


def test_continuous_step_action_is_the_mean_clipped_to_bounds():
    torch.manual_seed(3)
    spec = make_spec("policy", BOX, 1, "gru")
    model = ActorCritic(spec)
    with torch.no_grad():
        model.policy_head.bias.fill_(5.0)
    (mean, log_std, action, value), _ = model.step(torch.randn(4, OBS_DIM), initial_state(spec, 4), torch.ones(4))
    assert mean.shape == log_std.shape == action.shape == (4, 2)
    assert value.shape == (4,)
    assert torch.all(action == 1.0)


def test_obs_normalisation_is_applied_inside_the_model():
    torch.manual_seed(4)
    spec = make_spec("q", DISCRETE, 1, "lstm", norm=True)
    model = QNetwork(spec)
    x = torch.full((1, OBS_DIM), 0.1)
    torch.testing.assert_close(model.normalizer(x), torch.zeros(1, OBS_DIM))
    assert torch.all(model.normalizer(torch.full((1, OBS_DIM), 1e6)) == 10.0)


def test_models_refuse_the_wrong_spec_kind():
    with pytest.raises(ValueError, match="QNetwork needs a spec of kind 'q', got 'policy'"):
        QNetwork(make_spec("policy", DISCRETE, 1, "lstm"))
    with pytest.raises(ValueError, match="ActorCritic needs a spec of kind 'policy', got 'q'"):
        ActorCritic(make_spec("q", DISCRETE, 1, "lstm"))


def legendre_readout(order: int, delay: int, theta: float) -> torch.Tensor:
    """``(order,)`` weights that read ``u_{t - delay}`` back from the memory (``delay <= theta - 1``): shifted Legendre
    polynomials at the middle of that step's hold, ``(delay + 0.5) / theta`` of the window back."""
    x = 2.0 * (delay + 0.5) / theta - 1.0
    return torch.tensor([np.polynomial.legendre.Legendre.basis(n)(x) for n in range(order)], dtype=torch.float32)


def test_the_legendre_memory_holds_the_last_theta_steps_of_a_smooth_signal():
    a_step, b_step = legendre_delay_system(order=24, theta=32.0)
    t = np.arange(200)
    signal = np.sin(2 * np.pi * t / 50) + 0.5 * np.cos(2 * np.pi * t / 23)  # slow against the 32-step window
    memory = torch.zeros(24)
    for value in signal:
        memory = a_step @ memory + b_step * float(value)
    for delay in (0, 8, 16, 31):
        decoded = float(legendre_readout(24, delay, 32.0) @ memory)
        assert abs(decoded - signal[-1 - delay]) < 0.01, (delay, decoded, signal[-1 - delay])


def test_the_lmu_layer_keeps_that_memory_of_its_projected_input():
    torch.manual_seed(5)
    lmu = LmuSpec(order=24, theta=32.0, memory_inputs=1)
    layer = LegendreMemoryLayer(input_size=1, hidden_size=3, lmu=lmu)
    with torch.no_grad():
        layer.encode.weight.fill_(1.0)
        layer.encode.bias.zero_()
    t = torch.arange(120, dtype=torch.float32)
    signal = torch.sin(2 * torch.pi * t / 50)  # (T,)
    with torch.no_grad():
        _, _, m = layer(signal.view(-1, 1, 1), torch.zeros(1, 3), torch.zeros(1, lmu.width), None)
    assert m.shape == (1, 24)
    decoded = float(legendre_readout(24, 20, 32.0) @ m[0])
    assert abs(decoded - float(signal[-21])) < 0.01


def test_lmu_state_is_h_and_a_memory_of_its_own_width():
    spec = make_spec("policy", DISCRETE, 2, "lmu")
    state = initial_state(spec, 5)
    assert state.h.shape == (4, 5, 8) and state.c.shape == (4, 5, 12)  # 2 layers x 2 cores; 2 inputs x order 6
    with pytest.raises(ValueError, match="cell 'lmu' needs its Legendre memory's settings"):
        RecurrentCore("lmu", 4, 8, 1)
