"""Recurrent Q-network and recurrent actor-critic, built from a :class:`~rnnpolicy.PolicySpec`.

Every recurrent call takes ``(obs, state, episode_start)``; ``episode_start`` zeroes that
row's state before its observation is used, by arithmetic, so the reset traces into an
exported graph exactly as it runs in training. Tensors are time-major: ``(T, B, ...)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnpolicy.spec import ImageSpec, LmuSpec, PolicySpec


class RecurrentState(NamedTuple):
    """Hidden state: ``h`` ``(layers * cores, batch, hidden)`` and the cell's second tensor ``c``, ``None`` for GRU and ``ff``:
    LSTM's cell state (``state_c``, as wide as ``h``) or a Legendre memory unit's memory (``state_m``, ``lmu.width``)."""

    h: Tensor
    c: Tensor | None = None

    def masked(self, keep: Tensor) -> RecurrentState:
        """Multiply every row by ``keep`` ``(batch,)``: 0 zeroes that row's state."""
        keep = keep.view(1, -1, 1)
        return RecurrentState(self.h * keep, None if self.c is None else self.c * keep)

    def select(self, rows: slice) -> RecurrentState:
        """The state of layer rows ``rows`` (one core's share of a stacked state)."""
        return RecurrentState(self.h[rows], None if self.c is None else self.c[rows])

    def detach(self) -> RecurrentState:
        return RecurrentState(self.h.detach(), None if self.c is None else self.c.detach())

    @staticmethod
    def cat(parts: list[RecurrentState]) -> RecurrentState:
        """Stack cores' states along the layer axis."""
        if len(parts) == 1:
            return parts[0]
        c = None if parts[0].c is None else torch.cat([p.c for p in parts], dim=0)
        return RecurrentState(torch.cat([p.h for p in parts], dim=0), c)


def initial_state(spec: PolicySpec, batch: int, device: torch.device | str = "cpu") -> RecurrentState:
    """The zero state an episode starts from, for ``batch`` rows."""
    h, *second = (torch.zeros(s.layers, batch, s.hidden, device=device) for s in spec.state_tensors)
    return RecurrentState(h, second[0] if second else None)


def legendre_delay_system(order: int, theta: float) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of the Legendre memory's one-step update ``m_t = A m_{t-1} + B u_t`` (``(order, order)``,
    ``(order,)``): the continuous delay system of window ``theta`` steps held constant over each step (zero-order hold)."""
    q = torch.arange(order, dtype=torch.float64)
    rate = ((2 * q + 1) / theta)[:, None]  # (order, 1)
    i, j = q[:, None], q[None, :]
    sign = torch.where((i - j) % 2 == 0, -1.0, 1.0).to(torch.float64)  # (-1) ** (i - j + 1)
    a = rate * torch.where(i < j, torch.tensor(-1.0, dtype=torch.float64), sign)  # float64 for the exponential
    b = rate[:, 0] * torch.where(q % 2 == 0, 1.0, -1.0).to(torch.float64)
    a_step = torch.linalg.matrix_exp(a)
    b_step = torch.linalg.solve(a, (a_step - torch.eye(order, dtype=a.dtype)) @ b)
    return a_step.float(), b_step.float()


class LegendreMemoryLayer(nn.Module):
    """One layer of a Legendre memory unit (Voelker, Kajic and Eliasmith, 2019).

    ``u_t = W_u x_t`` projects the input to ``memory_inputs`` values; the memory ``m_t = m_{t-1} A^T + u_t b``
    ``(batch, memory_inputs, order)`` holds Legendre coefficients of each one's last ``theta`` steps, fixed, not
    learned; ``h_t = tanh(W [x_t, h_{t-1}, m_t] + bias)`` ``(batch, H)`` reads it. ``u`` does not depend on ``h``, so the
    memory of a whole sequence takes one cheap loop and its share of ``W`` one matrix product; only ``h`` steps.
    """

    def __init__(self, input_size: int, hidden_size: int, lmu: LmuSpec) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.lmu = input_size, hidden_size, lmu
        self.encode = nn.Linear(input_size, lmu.memory_inputs)
        self.mix = nn.Linear(input_size + hidden_size + lmu.width, hidden_size)
        a_step, b_step = legendre_delay_system(lmu.order, lmu.theta)
        self.register_buffer("a_step_t", a_step.T.contiguous(), persistent=False)  # (order, order)
        self.register_buffer("b_step", b_step, persistent=False)  # (order,)

    def forward(self, x: Tensor, h: Tensor, m: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``(T, B, F)``, ``h`` ``(B, H)``, ``m`` ``(B, memory_inputs * order)``; ``keep`` ``(T, B)`` zeroes a
        row's state before step ``t`` where it is 0 (``None``: keep all) -> ``(T, B, H)``, last ``h``, last ``m``."""
        f, hidden = self.input_size, self.hidden_size
        w_x, w_h, w_m = self.mix.weight.split([f, hidden, self.lmu.width], dim=1)
        u = self.encode(x).unsqueeze(-1)  # (T, B, memory_inputs, 1)
        memory = m.unflatten(-1, (self.lmu.memory_inputs, self.lmu.order))  # (B, memory_inputs, order)
        memories = []
        for t in range(x.shape[0]):
            if keep is not None:
                memory = memory * keep[t, :, None, None]
            memory = memory @ self.a_step_t + u[t] * self.b_step  # (B, memory_inputs, order)
            memories.append(memory)
        m_seq = torch.stack(memories).flatten(-2)  # (T, B, memory_inputs * order)
        drive = F.linear(x, w_x, self.mix.bias) + F.linear(m_seq, w_m)  # (T, B, H)
        outputs = []
        for t in range(x.shape[0]):
            if keep is not None:
                h = h * keep[t, :, None]
            h = torch.tanh(drive[t] + F.linear(h, w_h))  # (B, H)
            outputs.append(h)
        return torch.stack(outputs), h, m_seq[-1]


class RecurrentCore(nn.Module):
    """An LSTM, GRU or Legendre memory unit over ``(T, B, F)`` that resets rows at ``episode_start``;
    ``ff`` is the memoryless ablation."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, lmu: LmuSpec | None = None) -> None:
        super().__init__()
        self.cell = cell
        if cell == "lstm":
            self.rnn: nn.Module = nn.LSTM(input_size, hidden_size, num_layers)
        elif cell == "gru":
            self.rnn = nn.GRU(input_size, hidden_size, num_layers)
        elif cell == "lmu":
            if lmu is None:
                raise ValueError("cell 'lmu' needs its Legendre memory's settings (lmu), got None")
            self.rnn = nn.ModuleList(
                LegendreMemoryLayer(input_size if layer == 0 else hidden_size, hidden_size, lmu) for layer in range(num_layers)
            )
        elif cell == "ff":
            self.rnn = nn.Sequential(nn.Linear(input_size, hidden_size), nn.Tanh())
        else:
            raise ValueError(f"cell must be 'lstm', 'gru', 'lmu' or 'ff', got {cell!r}")

    def _run_lmu(self, x: Tensor, state: RecurrentState, keep: Tensor | None) -> tuple[Tensor, RecurrentState]:
        # x: (T, B, F); state.h: (layers, B, H); state.c: (layers, B, memory_inputs * order)
        assert state.c is not None
        hs, ms = [], []
        for layer, cell in enumerate(self.rnn):
            x, h, m = cell(x, state.h[layer], state.c[layer], keep)
            hs.append(h)
            ms.append(m)
        return x, RecurrentState(torch.stack(hs), torch.stack(ms))

    def _run(self, x: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        # x: (T, B, F); state: (layers, B, H)
        if self.cell == "lmu":
            return self._run_lmu(x, state, None)
        if self.cell == "lstm":
            out, (h, c) = self.rnn(x, (state.h, state.c))
            return out, RecurrentState(h, c)
        if self.cell == "gru":
            out, h = self.rnn(x, state.h)
            return out, RecurrentState(h)
        # Feed-forward: the state passes through as zeros, so every stage keeps one interface.
        return self.rnn(x), state.masked(torch.zeros_like(state.h[0, :, 0]))

    def _cell_math(self, x: Tensor, state: RecurrentState) -> RecurrentState:
        """One step of every layer from the cell's weights, op by op: the same numbers as ``nn.LSTM``/``nn.GRU``."""
        hs, cs = [], []
        for layer in range(len(state.h)):
            h = state.h[layer]  # (B, H)
            gates_x = F.linear(x, getattr(self.rnn, f"weight_ih_l{layer}"), getattr(self.rnn, f"bias_ih_l{layer}"))
            gates_h = F.linear(h, getattr(self.rnn, f"weight_hh_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}"))
            if self.cell == "lstm":
                assert state.c is not None
                i, f, g, o = (gates_x + gates_h).chunk(4, dim=1)  # (B, H) each: input, forget, cell, output
                c = torch.sigmoid(f) * state.c[layer] + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                cs.append(c)
            else:
                x_r, x_z, x_n = gates_x.chunk(3, dim=1)  # (B, H) each: reset, update, new
                h_r, h_z, h_n = gates_h.chunk(3, dim=1)
                r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                h = (1.0 - z) * torch.tanh(x_n + r * h_n) + z * h
            hs.append(h)
            x = h
        return RecurrentState(torch.stack(hs), torch.stack(cs) if cs else None)

    def step(self, x: Tensor, state: RecurrentState, episode_start: Tensor, *, cell_math: bool = False) -> tuple[Tensor, RecurrentState]:
        """One step: ``x`` ``(B, F)``, ``episode_start`` ``(B,)`` -> ``(B, H)`` and the next state.

        ``cell_math`` computes the step op by op from the cell's weights instead of calling
        ``nn.LSTM``/``nn.GRU`` (equal to float rounding): about 2.5x faster for one step in eager
        PyTorch, which rollouts and evaluations take; exports trace the module call.
        """
        state = state.masked(1.0 - episode_start.float())
        if cell_math and self.cell in ("lstm", "gru"):
            state = self._cell_math(x, state)
            return state.h[-1], state
        out, state = self._run(x.unsqueeze(0), state)
        if self.cell == "ff":
            return out.squeeze(0), state
        # One step's output is the last layer's new hidden state; taking it from the state
        # exports as one Gather instead of the two Squeezes of the (T, directions) axes.
        return state.h[-1], state

    def forward(self, x: Tensor, state: RecurrentState, episode_start: Tensor) -> tuple[Tensor, RecurrentState]:
        """A whole sequence: ``x`` ``(T, B, F)``, ``episode_start`` ``(T, B)`` -> ``(T, B, H)`` and the final state.

        Runs as one fused call when episodes start only at ``t = 0`` (how the trainers batch
        their sequences); otherwise steps through time, resetting rows where episodes start.
        A Legendre memory unit always takes the resets inside its own loop.
        """
        keep = 1.0 - episode_start.float()  # (T, B)
        if self.cell == "lmu":
            return self._run_lmu(x, state, keep)
        if not bool((keep[1:] == 0).any()):
            return self._run(x, state.masked(keep[0]))
        outputs = []
        for t in range(x.shape[0]):
            out, state = self._run(x[t : t + 1], state.masked(keep[t]))
            outputs.append(out)
        return torch.cat(outputs, dim=0), state


def init_forget_bias(module: nn.Module, value: float) -> None:
    """Set the forget-gate bias (``bias_ih + bias_hh``) of every LSTM in ``module`` to ``value``.

    A bias of 1 keeps memories from fading in the first updates (Jozefowicz et al., 2015);
    GRU and feed-forward cores are left alone.
    """
    with torch.no_grad():
        for lstm in (m for m in module.modules() if isinstance(m, nn.LSTM)):
            hidden = lstm.hidden_size
            for name, bias in lstm.named_parameters():
                if name.startswith("bias_"):
                    bias[hidden : 2 * hidden] = value / 2  # gates are ordered input, forget, cell, output


class ObsNormalizer(nn.Module):
    """``clip((obs - mean) / sqrt(var + eps))`` with statistics held as buffers (identity when off)."""

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.enabled = spec.obs_norm is not None
        dim = spec.obs_dim
        norm = spec.obs_norm
        self.register_buffer("mean", torch.tensor(norm.mean if norm else [0.0] * dim, dtype=torch.float32))
        self.register_buffer("var", torch.tensor(norm.var if norm else [1.0] * dim, dtype=torch.float32))
        self.clip = norm.clip if norm else 0.0
        self.eps = norm.eps if norm else 0.0

    def forward(self, obs: Tensor) -> Tensor:
        if not self.enabled:
            return obs
        return torch.clamp((obs - self.mean) / torch.sqrt(self.var + self.eps), -self.clip, self.clip)


class ImageEncoder(nn.Module):
    """Convolutions over an image observation, then a linear layer to ``hidden`` features.

    Images of at least 36 pixels a side get NatureCNN's three layers (Mnih et al., 2015, as in
    Stable-Baselines3 and CleanRL); smaller ones (MiniGrid's 7x7) get two 3x3 convolutions of 16
    and 32 channels, unpadded from 5 pixels a side up and padded below. An image of codes
    (``image.codes > 0``) enters them one-hot, ``channels * codes`` planes, as BabyAI embeds
    MiniGrid's indices: read as numbers, a key (5) and a ball (6) differ by a fraction of what any
    object adds (benchmarks/code_image_bench.py: telling which object matches a cue was learned on
    3 of 3 seeds one-hot, on 1 of 3 read as numbers).

    Each layer starts orthogonal with gain sqrt(2) and zero bias, as CleanRL's and Stable-Baselines3's
    encoders do. PyTorch's default initialisation shrinks the signal at every layer, and the few cells
    that tell one MiniGrid view from another then barely move the features. A cue held for four
    blank steps was then not learned (benchmarks/results/minigrid_memory_s11_notes.md, session 14).
    """

    def __init__(self, image: ImageSpec, hidden: int) -> None:
        super().__init__()
        self.image = image
        c, h, w = image.channels, image.height, image.width
        if image.codes:
            self.register_buffer("code_values", torch.arange(image.codes, dtype=torch.float32), persistent=False)
            c *= image.codes
        if min(h, w) >= 36:
            layers: list[nn.Module] = [nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2),
                                       nn.ReLU(), nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]
        else:
            pad = 0 if min(h, w) >= 5 else 1
            layers = [nn.Conv2d(c, 16, 3, padding=pad), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=pad), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).shape[1]
        self.linear = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
                nn.init.zeros_(layer.bias)

    def planes(self, obs: Tensor) -> Tensor:
        """What the convolutions read: ``obs`` ``(N, obs_dim)`` -> ``(N, C, H, W)``, scaled or one-hot (``C * codes`` planes)."""
        x = obs.reshape(-1, *self.image.shape)  # (N, H, W, C) or (N, C, H, W)
        if self.image.codes:
            x = (x.unsqueeze(-1) == self.code_values).to(obs.dtype)  # (N, H, W, C, K) or (N, C, H, W, K)
            if self.image.layout == "hwc":
                return x.flatten(3).permute(0, 3, 1, 2)  # (N, C * K, H, W)
            return x.permute(0, 1, 4, 2, 3).flatten(1, 2)  # (N, C * K, H, W)
        if self.image.layout == "hwc":
            x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
        return x * self.image.scale

    def forward(self, obs: Tensor) -> Tensor:
        """``obs`` ``(..., obs_dim)``, each row the image in its own layout -> ``(..., hidden)``."""
        features = self.linear(self.convs(self.planes(obs)))  # (N, hidden)
        return features.reshape(*obs.shape[:-1], features.shape[-1])


def _encoder(spec: PolicySpec) -> nn.Module:
    if spec.image is not None:
        return ImageEncoder(spec.image, spec.hidden_size)
    return nn.Sequential(nn.Linear(spec.obs_dim, spec.hidden_size), nn.ReLU())


def factored_greedy(logits: Tensor, nvec: tuple[int, ...]) -> Tensor:
    """The most likely value of each entry: ``logits`` ``(..., sum(nvec))`` -> ``(..., k)`` int64."""
    if len(set(nvec)) == 1:
        return logits.unflatten(-1, (len(nvec), nvec[0])).argmax(-1)
    return torch.stack([part.argmax(-1) for part in logits.split(list(nvec), dim=-1)], dim=-1)


def factored_sample(logits: Tensor, nvec: tuple[int, ...]) -> Tensor:
    """One value drawn per entry: ``logits`` ``(B, sum(nvec))`` -> ``(B, k)`` int64."""
    if len(set(nvec)) == 1:
        probs = torch.softmax(logits.reshape(-1, nvec[0]), dim=-1)  # (B * k, n)
        return torch.multinomial(probs, 1).reshape(logits.shape[0], len(nvec))
    parts = [torch.multinomial(torch.softmax(p, dim=-1), 1) for p in logits.split(list(nvec), dim=-1)]
    return torch.cat(parts, dim=-1)


def factored_log_prob_entropy(logits: Tensor, actions: Tensor, nvec: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Log-probability of ``actions`` ``(..., k)`` and entropy, each ``(...)``: sums over the independent entries.

    ``logits`` ``(..., sum(nvec))`` hold entry ``i``'s logits at columns ``sum(nvec[:i]) .. sum(nvec[:i+1])``.
    """
    if len(set(nvec)) == 1:
        log_probs = torch.log_softmax(logits.unflatten(-1, (len(nvec), nvec[0])), dim=-1)  # (..., k, n)
        chosen = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # (..., k)
        return chosen.sum(-1), -(log_probs.exp() * log_probs).sum((-2, -1))
    log_prob = entropy = torch.zeros(logits.shape[:-1], device=logits.device)
    for j, part in enumerate(logits.split(list(nvec), dim=-1)):
        log_probs = torch.log_softmax(part, dim=-1)  # (..., n_j)
        log_prob = log_prob + log_probs.gather(-1, actions[..., j : j + 1]).squeeze(-1)
        entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
    return log_prob, entropy


class QNetwork(nn.Module):
    """The tutorial's ``QNet``: encoder, recurrent core (LSTM, GRU or LMU), linear head over the actions."""

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        if spec.kind != "q":
            raise ValueError(f"QNetwork needs a spec of kind 'q', got {spec.kind!r}")
        self.spec = spec
        self.normalizer = ObsNormalizer(spec)
        self.encoder = _encoder(spec)
        self.core = RecurrentCore(spec.cell, spec.hidden_size, spec.hidden_size, spec.num_layers, spec.lmu)
        self.head = nn.Linear(spec.hidden_size, spec.action.n)

    def forward(self, obs: Tensor, state: RecurrentState, episode_start: Tensor) -> tuple[Tensor, RecurrentState]:
        """``obs`` ``(T, B, F)`` -> Q-values ``(T, B, A)`` and the final state."""
        features, state = self.core(self.encoder(self.normalizer(obs)), state, episode_start)
        return self.head(features), state

    def step(
        self, obs: Tensor, state: RecurrentState, episode_start: Tensor, *, cell_math: bool = False
    ) -> tuple[tuple[Tensor, ...], RecurrentState]:
        """One step for a batch: ``(q_values (B, A), action (B,))`` and the next state (``cell_math``: see :meth:`RecurrentCore.step`)."""
        features, state = self.core.step(self.encoder(self.normalizer(obs)), state, episode_start, cell_math=cell_math)
        q_values = self.head(features)
        return (q_values, torch.argmax(q_values, dim=-1)), state


def _scatter_steps(features: Tensor, steps: Tensor) -> Tensor:
    """``features`` ``(N, H)`` of the ``N`` true entries of ``steps`` ``(T, B)`` -> ``(T, B, H)``, zeros elsewhere."""
    out = features.new_zeros(*steps.shape, features.shape[-1])
    out[steps] = features
    return out


class ActorCritic(nn.Module):
    """Recurrent actor-critic: categorical head for discrete actions (factored, one per entry, for
    multi-discrete and multi-binary ones), Gaussian head for boxes, value head.

    With ``spec.num_cores == 2`` actor and critic have separate recurrent cores, whose states
    are stacked along the layer axis (actor first).
    """

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        if spec.kind != "policy":
            raise ValueError(f"ActorCritic needs a spec of kind 'policy', got {spec.kind!r}")
        self.spec = spec
        self.normalizer = ObsNormalizer(spec)
        hidden = spec.hidden_size
        self.actor_encoder = _encoder(spec)
        self.actor_core = RecurrentCore(spec.cell, hidden, hidden, spec.num_layers, spec.lmu)
        if spec.num_cores == 2:
            self.critic_encoder = _encoder(spec)
            self.critic_core = RecurrentCore(spec.cell, hidden, hidden, spec.num_layers, spec.lmu)
        self.value_head = nn.Linear(hidden, 1)
        action = spec.action
        if action.is_discrete or action.is_factored:
            self.policy_head = nn.Linear(hidden, action.num_logits)
        else:
            self.policy_head = nn.Linear(hidden, action.dim)
            self.log_std = nn.Parameter(torch.zeros(action.dim))
            self.register_buffer("action_low", torch.tensor(action.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.tensor(action.high, dtype=torch.float32))
        nn.init.orthogonal_(self.policy_head.weight, gain=0.01)
        nn.init.zeros_(self.policy_head.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)

    def _features(
        self,
        obs: Tensor,
        state: RecurrentState,
        episode_start: Tensor,
        step: bool,
        cell_math: bool = False,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, RecurrentState]:
        obs = self.normalizer(obs)
        layers = self.spec.num_layers
        encode = lambda encoder: encoder(obs)  # noqa: E731
        if lengths is not None and self.spec.image is not None:
            own = torch.arange(obs.shape[0], device=obs.device)[:, None] < lengths[None, :]  # (T, B)
            if not bool(own.all()):
                encode = lambda encoder: _scatter_steps(encoder(obs[own]), own)  # noqa: E731
        if step:
            run = lambda core, x, s: core.step(x, s, episode_start, cell_math=cell_math)  # noqa: E731
        else:
            run = lambda core, x, s: core(x, s, episode_start)  # noqa: E731
        if self.spec.num_cores == 1:
            features, state = run(self.actor_core, encode(self.actor_encoder), state)
            return features, features, state
        actor, actor_state = run(self.actor_core, encode(self.actor_encoder), state.select(slice(0, layers)))
        critic, critic_state = run(self.critic_core, encode(self.critic_encoder), state.select(slice(layers, 2 * layers)))
        return actor, critic, RecurrentState.cat([actor_state, critic_state])

    def _heads(self, actor: Tensor, critic: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Distribution parameters: ``(logits, value)`` or ``(mean, log_std, value)`` packed as three tensors."""
        params = self.policy_head(actor)
        value = self.value_head(critic).squeeze(-1)
        if self.spec.action.is_discrete or self.spec.action.is_factored:
            return params, params.new_zeros(()), value
        return params, self.log_std.expand_as(params), value

    def forward(
        self, obs: Tensor, state: RecurrentState, episode_start: Tensor, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, RecurrentState]:
        """``obs`` ``(T, B, F)`` -> ``(logits or mean (T, B, A), log_std (T, B, A) or scalar 0, value (T, B), state)``.

        ``lengths`` ``(B,)`` marks padding: sequence ``b``'s steps from ``lengths[b]`` on. Image encoders
        skip them (the recurrent core reads zeros there), so the outputs and final state there mean
        nothing, while every earlier step's are unchanged. PPO's minibatches of MiniGrid episodes were
        about 60% padding, and the image encoder the larger part of an update's cost. A vector
        observation's encoder, one small layer, runs on every step as before: skipping saves it
        nothing, and its runs repeat the numbers they gave before.
        """
        actor, critic, state = self._features(obs, state, episode_start, step=False, lengths=lengths)
        return (*self._heads(actor, critic), state)

    def distribution(self, params: Tensor, log_std: Tensor) -> torch.distributions.Distribution:
        """The policy of a discrete or box space (factored spaces use the ``factored_*`` functions)."""
        if self.spec.action.is_factored:
            raise ValueError("a factored action space has no single torch distribution; use factored_log_prob_entropy")
        if self.spec.action.is_discrete:
            return torch.distributions.Categorical(logits=params)
        return torch.distributions.Independent(torch.distributions.Normal(params, log_std.exp()), 1)

    def clip_action(self, action: Tensor) -> Tensor:
        """Map a continuous action into the action bounds."""
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low)

    def step(
        self, obs: Tensor, state: RecurrentState, episode_start: Tensor, *, cell_math: bool = False
    ) -> tuple[tuple[Tensor, ...], RecurrentState]:
        """One step for a batch, deterministic action: ``(logits, action, value)`` or ``(mean, log_std, action, value)``.

        ``action`` is ``(B,)`` for a discrete space, ``(B, k)`` (each entry's most likely value) for a
        factored one and ``(B, A)`` for a box. ``cell_math``: see :meth:`RecurrentCore.step`.
        """
        actor, critic, state = self._features(obs, state, episode_start, step=True, cell_math=cell_math)
        params, log_std, value = self._heads(actor, critic)
        if self.spec.action.is_discrete:
            return (params, torch.argmax(params, dim=-1), value), state
        if self.spec.action.is_factored:
            return (params, factored_greedy(params, self.spec.action.nvec), value), state
        return (params, log_std, self.clip_action(params), value), state


def build_model(spec: PolicySpec) -> QNetwork | ActorCritic:
    """The network a spec describes, with fresh weights."""
    return QNetwork(spec) if spec.kind == "q" else ActorCritic(spec)
