"""Vectorised environments for training and the policy spec they imply."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.envs import make_env
from rnnpolicy.spec import ActionSpec, ImageSpec
from rnnpolicy.train.config import TrainConfig

VECTOR_MODES = ("sync", "async")


def make_vector_env(
    env_id: str, num_envs: int, seed: int, wrappers: Sequence[str] = (), mode: str = "sync"
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` (each wrapped by ``wrappers``) that reset themselves in the step that ends an episode.

    ``mode`` ``sync`` steps them in this process; ``async`` gives each its own worker process
    (gymnasium's ``AsyncVectorEnv``), worth it when one step costs more than the inter-process
    round trip (about 0.1 ms). The observation returned with ``terminated | truncated`` is already
    the next episode's first one (the last one is in ``info["final_obs"]``), so each row's next
    observation is an episode start exactly when the previous step was done.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if mode not in VECTOR_MODES:
        raise ValueError(f"vector_env must be one of {VECTOR_MODES}, got {mode!r}")
    make_env(env_id, wrappers).close()  # fail fast, with a clear message, on an unknown id or wrapper
    factories = [functools.partial(make_env, env_id, tuple(wrappers)) for _ in range(num_envs)]
    autoreset = gym.vector.AutoresetMode.SAME_STEP
    if mode == "async":
        envs: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv(factories, autoreset_mode=autoreset)
    else:
        envs = gym.vector.SyncVectorEnv(factories, autoreset_mode=autoreset)
    envs.action_space.seed(seed)
    return envs


def observation_encoding(env: gym.Env | gym.vector.VectorEnv) -> ObsEncoding:
    space = getattr(env, "single_observation_space", env.observation_space)
    return ObsEncoding.from_space(space)


def action_spec(env: gym.Env | gym.vector.VectorEnv) -> ActionSpec:
    """The action space (of one environment of a vector env) as a spec; see :meth:`ActionSpec.from_space`."""
    return ActionSpec.from_space(getattr(env, "single_action_space", env.action_space))


CODED_IMAGE_LIMIT = 32
"""A uint8 image whose first observation stays below this holds codes (MiniGrid's object, colour and
state indices run 0-10), not intensities; by default each channel is read one-hot over this many values."""


def image_spec(env: gym.Env | gym.vector.VectorEnv, scale: float | None = None, codes: int = 0) -> ImageSpec | None:
    """How the convolutional encoder reads the observation, or None when it is not one rank-3 ``Box``.

    The channel axis is the smallest of the three, first or last (as Stable-Baselines3 decides it;
    a tie goes to channels-last, the more common layout). With ``codes`` each channel is read one-hot
    over that many values; otherwise the image is multiplied by ``scale`` (default: 1/255 for uint8,
    else 1). Training decides both with :func:`is_coded_image` unless told.
    """
    space = getattr(env, "single_observation_space", env.observation_space)
    if not isinstance(space, spaces.Box) or len(space.shape) != 3:
        return None
    shape = tuple(int(d) for d in space.shape)
    if codes:
        scale = 1.0
    elif scale is None:
        scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
    if shape[2] <= shape[0]:
        return ImageSpec("hwc", height=shape[0], width=shape[1], channels=shape[2], scale=scale, codes=codes)
    return ImageSpec("chw", height=shape[1], width=shape[2], channels=shape[0], scale=scale, codes=codes)


def run_image_spec(envs: gym.Env | gym.vector.VectorEnv, config: TrainConfig) -> ImageSpec | None:
    """The image a run's convolutional encoder reads, as ``config`` resolved it (:func:`rnnpolicy.train.api.resolve`);
    None with ``image_encoder`` flatten or no image."""
    if config.image_encoder != "cnn":
        return None
    return image_spec(envs, config.image_scale, config.image_codes or 0)


def is_coded_image(env: gym.Env, seed: int) -> bool:
    """Whether ``env``'s image observation holds codes rather than intensities.

    A uint8 image whose first observation (after ``reset(seed=seed)``) stays below
    :data:`CODED_IMAGE_LIMIT` holds codes (MiniGrid's 0-10); one that reaches it holds intensities,
    as do images of other dtypes (not reset).
    """
    if env.observation_space.dtype != np.uint8:
        return False
    obs, _ = env.reset(seed=seed)
    return int(np.max(obs)) < CODED_IMAGE_LIMIT
