"""How far back can the recurrent core learn to recall, given full supervision? POPGym's RepeatPrevious, supervised.

``popgym-RepeatPrevious*`` pays the agent for naming the suit of the card ``k`` cards back (the
current card counts as the first: the answer is the observation ``k - 1`` steps before the current
one). Recurrent PPO learns this from a reward of +-1/72 per step; this benchmark removes the
reinforcement learning altogether and trains the very network ``rnnpolicy train --algo ppo`` builds
for the task (same spec, encoder, core, forget-gate bias and policy head) by cross-entropy on the
true answer at every scored step, backpropagating through whole 103-step episodes, with Adam and
gradient clipping as PPO uses them. If the core cannot learn a recall distance with the answer
given at every step, PPO cannot learn it from a reward within the same number of steps.

Episodes are the task's own: a shuffled deck of ``num_cards`` cards (``num_decks`` decks of 13
cards per suit) dealt one per step. Before training, the labels are checked against the real
environment: answering with them in ``--check-episodes`` episodes must earn the maximum return,
1.0, in every one. Held-out accuracy (a fixed set of 256 episodes, greedy answers on the scored
steps) is measured every ``--eval-every`` training steps; a delay counts as learned once it reaches
``--solved``. A uniform guess is right a quarter of the time. Writes ``results/NAME.json`` and ``.md``.

``--cells lmu`` trains the candidate that became ``rnnpolicy train --cell lmu``, a Legendre memory unit
(Voelker, Kajic and Eliasmith, 2019), in the form it was measured in here: a fixed linear memory of the
last ``--lmu-theta`` steps of the observation itself, ``--lmu-order`` Legendre coefficients per observation
value (the trainer's cell keeps a window of learned projections of its input instead), read with the
current observation and its own previous output by one tanh layer of ``--hidden-size`` units, then the
same 4-way answer. It tells whether a memory built for delays learns what the LSTM and GRU do not.

    python benchmarks/delay_recall_bench.py
    python benchmarks/delay_recall_bench.py --delays 4 31 --cells lstm --total-steps 1000000 --name delay_recall_quick
    python benchmarks/delay_recall_bench.py --cells lmu --delays 31 --name delay_recall_lmu
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RunConditions, describe  # noqa: E402

from rnnpolicy.train.models import legendre_delay_system  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "popgym:popgym-RepeatPreviousMedium-v0"
EVAL_EPISODES = 256


def shuffled_suits(rng: np.random.Generator, episodes: int, num_cards: int) -> np.ndarray:
    """``(T, episodes)`` suit indices 0-3 of the cards dealt, one episode per column, as the task deals them:
    a shuffled deck of ``num_cards`` (a quarter per suit), every card but the last observed (``T = num_cards - 1``)."""
    deck = np.repeat(np.arange(4), num_cards // 4)
    return np.stack([rng.permutation(deck)[:-1] for _ in range(episodes)], axis=1)


def recall_labels(suits: np.ndarray, delay: int) -> np.ndarray:
    """``(T - delay, B)``: at step ``t >= delay`` the suit observed ``delay`` steps earlier."""
    return suits[:-delay] if delay else suits


def check_labels(env_id: str, episodes: int, seed: int) -> int:
    """Play ``episodes`` of the real environment answering with :func:`recall_labels` (its own ``k - 1``);
    ``ValueError`` unless each earns the maximum return 1.0. Returns ``k``."""
    env = gym.make(env_id)
    k = env.unwrapped.k
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        seen, total, done = [int(obs)], 0.0, False
        while not done:
            answer = seen[-k] if len(seen) >= k else 0
            obs, reward, terminated, truncated, _ = env.step(answer)
            total += float(reward)
            seen.append(int(obs))
            done = terminated or truncated
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"answering with the suit {k - 1} steps back should return 1.0 on {env_id}, got {total:.4f}")
    env.close()
    return k


def build_policy(env: gym.Env, cell: str, hidden_size: int) -> torch.nn.Module:
    """The actor-critic ``rnnpolicy train --algo ppo`` builds for ``env`` (forget-gate bias 1, as PPO's default)."""
    from rnnpolicy.spec import PolicySpec
    from rnnpolicy.train.envs import action_spec, observation_encoding
    from rnnpolicy.train.models import ActorCritic, init_forget_bias
    from rnnpolicy.train.ppo import Config

    spec = PolicySpec(kind="policy", cell=cell, num_layers=1, hidden_size=hidden_size,
                      obs_encoding=observation_encoding(env), action=action_spec(env), algo="ppo")
    model = ActorCritic(spec)
    init_forget_bias(model, Config().forget_bias)
    return model


class LegendreMemoryPolicy(torch.nn.Module):
    """The candidate cell on a one-hot observation: memory ``(B, F, order)`` of the last ``theta`` steps of each of
    ``F`` observation values, then ``h_t = tanh(W [x_t, h_{t-1}, m_t])`` ``(B, hidden)`` and 4 logits."""

    cell = "lmu"

    def __init__(self, features: int, hidden_size: int, order: int, theta: float) -> None:
        super().__init__()
        a_step, b_step = legendre_delay_system(order, theta)
        self.register_buffer("a_step", a_step)
        self.register_buffer("b_step", b_step)
        self.hidden_size = hidden_size
        self.mix = torch.nn.Linear(features + hidden_size + features * order, hidden_size)
        self.head = torch.nn.Linear(hidden_size, 4)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs`` ``(T, B, F)`` of whole episodes, from an empty memory -> logits ``(T, B, 4)``."""
        steps, batch, features = obs.shape
        memory = obs.new_zeros(batch, features, len(self.b_step))  # (B, F, order)
        h = obs.new_zeros(batch, self.hidden_size)  # (B, H)
        logits = []
        for t in range(steps):
            memory = memory @ self.a_step.T + obs[t, :, :, None] * self.b_step  # (B, F, order)
            h = torch.tanh(self.mix(torch.cat([obs[t], h, memory.reshape(batch, -1)], dim=-1)))
            logits.append(self.head(h))
        return torch.stack(logits)


def chrono_init(model: torch.nn.Module, longest: float) -> None:
    """Chrono initialisation of every LSTM's gates (Tallec & Ollivier, 2018): forget-gate bias ``log(u)``,
    ``u ~ U(1, longest - 1)``, input-gate bias its negative, so the units start with memory spans spread up to ``longest`` steps."""
    with torch.no_grad():
        for lstm in (m for m in model.modules() if isinstance(m, torch.nn.LSTM)):
            hidden = lstm.hidden_size
            for name, bias in lstm.named_parameters():
                if name.startswith("bias_hh"):
                    bias.zero_()
                elif name.startswith("bias_ih"):
                    bias.zero_()
                    forget = torch.log(torch.empty(hidden).uniform_(1.0, longest - 1.0))
                    bias[hidden : 2 * hidden] = forget  # gates are ordered input, forget, cell, output
                    bias[:hidden] = -forget


def recall_logits(model: torch.nn.Module, suits: np.ndarray) -> torch.Tensor:
    """The policy's logits ``(T, B, 4)`` over whole episodes of ``suits`` ``(T, B)``, from the zero state."""
    from rnnpolicy.train.models import initial_state

    obs = F.one_hot(torch.as_tensor(suits), 4).float()  # (T, B, 4): the spec's one-hot encoding of Discrete(4)
    if isinstance(model, LegendreMemoryPolicy):
        return model(obs)
    episode_start = torch.zeros(suits.shape)
    episode_start[0] = 1.0
    logits, _, _, _ = model(obs, initial_state(model.spec, suits.shape[1]), episode_start)
    return logits


def train_delay(args: argparse.Namespace, model: torch.nn.Module, delay: int, num_cards: int) -> dict:
    """Train ``model`` (fresh, from :func:`build_policy`) on one recall delay; returns its curve and when (if) it was learned."""
    rng = np.random.default_rng(args.seed)
    held_out = shuffled_suits(np.random.default_rng(args.seed + 10_000), EVAL_EPISODES, num_cards)
    cell = model.cell if isinstance(model, LegendreMemoryPolicy) else model.spec.cell
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=1e-5)
    steps_per_batch = args.batch * (num_cards - 1)
    curve: list[tuple[int, float]] = []
    learned_at, steps, started = None, 0, time.perf_counter()
    while steps < args.total_steps:
        suits = shuffled_suits(rng, args.batch, num_cards)  # (T, B)
        logits = recall_logits(model, suits)[delay:]  # (T - delay, B, 4): the scored steps
        loss = F.cross_entropy(logits.reshape(-1, 4), torch.as_tensor(recall_labels(suits, delay)).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        steps += steps_per_batch
        if steps % args.eval_every < steps_per_batch or steps >= args.total_steps:
            with torch.no_grad():
                answers = recall_logits(model, held_out)[delay:].argmax(-1).numpy()
            accuracy = float((answers == recall_labels(held_out, delay)).mean())
            curve.append((steps, round(accuracy, 4)))
            if learned_at is None and accuracy >= args.solved:
                learned_at = steps
            print(json.dumps({"cell": cell, "delay": delay, "steps": steps, "accuracy": round(accuracy, 4),
                              "loss": round(loss.item(), 4)}), flush=True)
    return {"cell": cell, "delay": delay, "steps": steps, "wall_s": round(time.perf_counter() - started, 1),
            "final_accuracy": curve[-1][1], "best_accuracy": max(a for _, a in curve), "learned_at": learned_at,
            "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=ENV, help=f"a popgym RepeatPrevious id (default {ENV})")
    parser.add_argument("--delays", type=int, nargs="+", default=[4, 8, 16, 31],
                        help="recall distances in steps (default 4 8 16 31; the task's own is its k - 1, 31 for Medium)")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru", "lmu"],
                        help="lstm and gru: PPO's own network; lmu: the Legendre memory candidate (default lstm gru)")
    parser.add_argument("--lmu-order", type=int, default=32, help="lmu: Legendre coefficients per observation value (default 32)")
    parser.add_argument("--lmu-theta", type=float, default=32.0, help="lmu: steps the memory spans (default 32)")
    parser.add_argument("--hidden-size", type=int, default=64, help="recurrent units (default 64, PPO's generic default)")
    parser.add_argument("--total-steps", type=int, default=5_000_000, help="observations trained on per delay (default 5M, the target's budget)")
    parser.add_argument("--batch", type=int, default=64, help="episodes per gradient step (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--chrono", type=float, default=0.0, metavar="STEPS",
                        help="chrono-initialise the LSTM's gates for spans up to STEPS instead of PPO's forget-gate bias 1 (default 0: off)")
    parser.add_argument("--eval-every", type=int, default=500_000)
    parser.add_argument("--solved", type=float, default=0.9, help="held-out accuracy that counts as learned (default 0.9)")
    parser.add_argument("--check-episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="delay_recall")
    args = parser.parse_args()
    if not args.lmu_theta > 0:
        parser.error(f"--lmu-theta must be > 0 steps, got {args.lmu_theta}")
    for name in ("hidden_size", "total_steps", "batch", "eval_every", "check_episodes", "lmu_order"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.chrono and (args.chrono <= 2 or args.cells != ["lstm"]):
        parser.error(f"--chrono needs STEPS > 2 and --cells lstm (it initialises LSTM gates), got {args.chrono} with {args.cells}")
    torch.set_num_threads(1)
    k = check_labels(args.env, args.check_episodes, args.seed)
    env = gym.make(args.env)
    num_cards = env.unwrapped.deck.num_cards
    for delay in args.delays:
        if not 0 <= delay < num_cards - 1:
            parser.error(f"--delays must lie in [0, {num_cards - 2}] for {args.env}'s {num_cards - 1}-step episodes, got {delay}")

    conditions = RunConditions()
    runs = []
    for cell in args.cells:
        for delay in args.delays:
            torch.manual_seed(args.seed)
            if cell == "lmu":
                model = LegendreMemoryPolicy(4, args.hidden_size, args.lmu_order, args.lmu_theta)
            else:
                model = build_policy(env, cell, args.hidden_size)
            if args.chrono:
                chrono_init(model, args.chrono)
            runs.append(train_delay(args, model, delay, num_cards))
    command = shlex.join(["python", "benchmarks/delay_recall_bench.py", *sys.argv[1:]])
    summary = {"command": command, "env": args.env, "task_delay": k - 1, "hidden_size": args.hidden_size,
               "batch": args.batch, "learning_rate": args.learning_rate, "chrono": args.chrono, "solved": args.solved, "seed": args.seed,
               "lmu_order": args.lmu_order, "lmu_theta": args.lmu_theta,
               "total_steps": args.total_steps, **conditions.finish(), "torch": torch.__version__, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Supervised recall through the recurrent core: {args.env}",
        "",
        f"Command: `{summary['command']}`  ",
        f"The network `rnnpolicy train --algo ppo --env {args.env} --hidden-size {args.hidden_size}` builds, trained by "
        f"cross-entropy on the suit seen DELAY steps earlier at every scored step of whole {num_cards - 1}-step episodes "
        f"(batches of {args.batch}, Adam lr {args.learning_rate}, seed {args.seed}"
        + (f", LSTM gates chrono-initialised for spans up to {args.chrono:g} steps" if args.chrono else ", forget-gate bias 1 as PPO's")
        + f"); accuracy of greedy answers on "
        f"{EVAL_EPISODES} held-out episodes (a guess: 0.25). The task's own delay is {k - 1} (labels checked on the real "
        f"environment: {args.check_episodes} episodes answered with them returned 1.0 each).  ",
        *([f"lmu: not PPO's network but the Legendre memory candidate, {args.lmu_order} coefficients per observation value "
           f"over the last {args.lmu_theta:g} steps, read by {args.hidden_size} tanh units.  "] if "lmu" in args.cells else []),
        describe(summary),
        "",
        f"| cell | delay | observations | wall s | best accuracy | final accuracy | learned (>= {args.solved}) at |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        learned = f"{run['learned_at']:,}" if run["learned_at"] is not None else "not learned"
        lines.append(f"| {run['cell']} | {run['delay']} | {run['steps']:,} | {run['wall_s']} | {run['best_accuracy']:.3f} | "
                     f"{run['final_accuracy']:.3f} | {learned} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
