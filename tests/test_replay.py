import numpy as np
import pytest
import torch

from rnnpolicy import ActionSpec, LmuSpec, ObsEncoding, PolicySpec
from rnnpolicy.train.models import QNetwork, initial_state
from rnnpolicy.train.replay import SequenceCollector, SequenceReplay

NUM_ENVS, SEQ_LEN, STRIDE = 3, 5, 2
# Per row: the lengths of its episodes and how each ends ("term" or "trunc").
EPISODES = [
    [(3, "term"), (12, "trunc"), (1, "term"), (6, "term"), (9, "trunc")],
    [(5, "term"), (7, "term"), (2, "trunc"), (10, "term"), (8, "term")],
    [(20, "trunc"), (4, "term"), (6, "trunc"), (2, "term")],
]
STEPS = min(sum(length for length, _ in row) for row in EPISODES)


def synthetic_stream(spec, model):
    """Drive a collector with ``model`` acting on observations that name (row, episode, time).

    Observation features: ``[row, episode, t, noise]``; the step after an episode's last one
    carries ``t = length`` (the final observation). Returns the replay and, for each
    ``(row, episode, t)``, the state the actor acted from and the Q-values it computed.
    """
    replay = SequenceReplay(1000, SEQ_LEN, spec.obs_dim, tuple((s.layers, s.hidden) for s in spec.state_tensors))
    collector = SequenceCollector(replay, NUM_ENVS, STRIDE)
    rng = np.random.default_rng(0)
    episode = np.zeros(NUM_ENVS, dtype=np.int64)
    t = np.zeros(NUM_ENVS, dtype=np.int64)
    state = initial_state(spec, NUM_ENVS)
    episode_start = torch.ones(NUM_ENVS)
    seen = {}

    def observe(rows_episode, rows_t):
        return np.stack([np.arange(NUM_ENVS), rows_episode, rows_t, rng.normal(size=NUM_ENVS)], axis=1).astype(np.float32)

    obs = observe(episode, t)
    for _ in range(STEPS):
        state = state.masked(1.0 - episode_start)
        with torch.no_grad():
            (q, _), next_state = model.step(torch.from_numpy(obs), state, episode_start)
        for row in range(NUM_ENVS):
            seen[(row, episode[row], t[row])] = (state.h[:, row].clone(), q[row].clone())
        lengths = np.array([EPISODES[r][episode[r]][0] for r in range(NUM_ENVS)])
        kinds = [EPISODES[r][episode[r]][1] for r in range(NUM_ENVS)]
        done = t + 1 == lengths
        terminated = done & np.array([k == "term" for k in kinds])
        truncated = done & ~terminated
        final_obs = observe(episode, t + 1)
        episode = np.where(done, episode + 1, episode)
        t = np.where(done, 0, t + 1)
        next_obs = observe(episode, t)
        actions = rng.integers(2, size=NUM_ENVS)
        collector.add(obs, state, actions, np.ones(NUM_ENVS, dtype=np.float32), terminated, truncated, final_obs)
        obs, state = next_obs, next_state
        episode_start = torch.as_tensor(done, dtype=torch.float32)
    return replay, seen


@pytest.fixture(params=["lstm", "gru", "lmu"])
def spec(request):
    return PolicySpec(
        kind="q", cell=request.param, num_layers=2, hidden_size=6, obs_encoding=ObsEncoding.flat(4), action=ActionSpec("discrete", n=2),
        lmu=LmuSpec(order=4, theta=6.0, memory_inputs=2) if request.param == "lmu" else None,
    )


def test_sequences_never_mix_episodes_and_are_cut_and_masked_at_their_end(spec):
    torch.manual_seed(0)
    replay, _ = synthetic_stream(spec, QNetwork(spec))
    batch = replay.batch(np.arange(len(replay)))
    assert len(replay) > 20
    for b in range(len(replay)):
        mask = batch.mask[:, b]
        steps = int(mask.sum())
        assert 1 <= steps <= SEQ_LEN
        assert mask[:steps].all() and not mask[steps:].any()  # real steps form a prefix
        row, episode, t0 = (int(v) for v in batch.obs[0, b, :3])
        length, kind = EPISODES[row][episode]
        # Every real observation, and the one after the last step, belongs to the same episode, in order.
        for i in range(steps + 1):
            assert batch.obs[i, b, :3].tolist() == [row, episode, t0 + i]
        assert (batch.obs[steps + 1 :, b] == 0).all() and (batch.actions[steps:, b] == 0).all()
        ends_episode = t0 + steps == length
        assert ends_episode or steps == SEQ_LEN  # cut only at an episode's end
        assert batch.terminated[:, b].tolist() == [ends_episode and kind == "term" and i == steps - 1 for i in range(SEQ_LEN)]
        assert bool(batch.episode_first[b]) == (t0 == 0)
        assert t0 % STRIDE == 0


def test_stored_state_is_the_state_the_actor_had_and_replays_its_q_values(spec):
    torch.manual_seed(0)
    model = QNetwork(spec)
    replay, seen = synthetic_stream(spec, model)
    batch = replay.batch(np.arange(len(replay)))
    with torch.no_grad():
        q, _ = model(batch.obs, batch.state, torch.zeros(batch.obs.shape[:2]))  # (T + 1, B, A)
    for b in range(len(replay)):
        row, episode, t0 = (int(v) for v in batch.obs[0, b, :3])
        actor_h, _ = seen[(row, episode, t0)]
        torch.testing.assert_close(batch.state.h[:, b], actor_h, rtol=0, atol=0)
        if t0 == 0:
            assert (batch.state.h[:, b] == 0).all()
        for i in range(int(batch.mask[:, b].sum())):
            torch.testing.assert_close(q[i, b], seen[(row, episode, t0 + i)][1], rtol=0, atol=1e-5)


def test_replay_is_a_ring_and_rejects_malformed_sequences():
    replay = SequenceReplay(2, 3, obs_dim=1, state_shapes=((1, 2),))
    for k in range(3):
        replay.add(np.full((2, 1), k), np.array([k]), np.array([1.0]), False, np.zeros((1, 2)), None, True)
    assert len(replay) == 2
    assert sorted(replay.batch(np.arange(2)).actions[0].tolist()) == [1, 2]
    with pytest.raises(ValueError, match="1 to 3 steps and one observation more, got 1 observations"):
        replay.add(np.zeros((1, 1)), np.array([0]), np.array([0.0]), False, np.zeros((1, 2)), None, True)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        replay.batch(np.array([2]))
    with pytest.raises(ValueError, match="stride must be in"):
        SequenceCollector(replay, num_envs=1, stride=4)
