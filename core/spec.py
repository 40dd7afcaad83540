"""The policy spec: a torch-free description of a trained policy that every stage reads.

The trainer writes it into each checkpoint, the exporter embeds it in every exported
file (ONNX ``metadata_props`` key ``rnnpolicy.spec``, extra file ``spec.json`` of the
``torch.export`` program and of TorchScript, AOTInductor package metadata ``rnnpolicy.spec``),
and the server and clients read it to check and encode observations.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from rnnpolicy.encoding import ObsEncoding

FORMAT_VERSION = 3
"""The newest spec format this rnnpolicy reads and writes. A spec is written with the lowest version that
describes it (1 unless it has factored actions or an image encoder, 2 for those, 3 for a Legendre memory
cell), so older readers still load those."""
READABLE_FORMAT_VERSIONS: tuple[int, ...] = (1, 2, 3)
SPEC_METADATA_KEY = "rnnpolicy.spec"

PolicyKind = Literal["q", "policy"]
CellKind = Literal["lstm", "gru", "lmu", "ff"]
ActionKind = Literal["discrete", "box", "multi_discrete", "multi_binary"]
ImageLayout = Literal["hwc", "chw"]

POLICY_KINDS: tuple[str, ...] = ("q", "policy")
CELL_KINDS: tuple[str, ...] = ("lstm", "gru", "lmu", "ff")
ACTION_KINDS: tuple[str, ...] = ("discrete", "box", "multi_discrete", "multi_binary")
FACTORED_KINDS: tuple[str, ...] = ("multi_discrete", "multi_binary")
IMAGE_LAYOUTS: tuple[str, ...] = ("hwc", "chw")

# The exported graph's input and output names: one place, used by trainer, exporter,
# server and clients alike.
OBS = "obs"
EPISODE_START = "episode_start"
STATE_H = "state_h"
STATE_C = "state_c"
STATE_M = "state_m"
NEXT_STATE_H = "next_state_h"
NEXT_STATE_C = "next_state_c"
NEXT_STATE_M = "next_state_m"
Q_VALUES = "q_values"
LOGITS = "logits"
MEAN = "mean"
LOG_STD = "log_std"
VALUE = "value"
ACTION = "action"


@dataclass(frozen=True)
class ActionSpec:
    """The action space.

    - ``discrete``: one of ``n`` actions;
    - ``box``: a float array of ``shape`` in [low, high];
    - ``multi_discrete`` / ``multi_binary``: an int array of ``shape`` whose entry ``i`` (row-major) is one of
      ``nvec[i]`` values (2 each for ``multi_binary``), chosen by a factored categorical head: one set of
      logits per entry, concatenated as ``[sum(nvec)]``.
    """

    kind: ActionKind
    n: int = 0
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    nvec: tuple[int, ...] = ()
    """Choices per action entry, flattened row-major from ``shape`` (factored kinds only)."""

    def __post_init__(self) -> None:
        if self.kind == "discrete":
            if self.n < 1:
                raise ValueError(f"a discrete action space needs n >= 1, got n={self.n}")
        elif self.kind == "box":
            size = _prod(self.shape)
            if size < 1 or len(self.low) != size or len(self.high) != size:
                raise ValueError(
                    f"a box action space needs shape, low and high of equal size, got "
                    f"shape={self.shape}, {len(self.low)} low and {len(self.high)} high values"
                )
        elif self.kind in FACTORED_KINDS:
            if _prod(self.shape) < 1 or len(self.nvec) != _prod(self.shape) or min(self.nvec) < 1:
                raise ValueError(
                    f"a {self.kind} action space needs one count >= 1 per entry of its shape, got "
                    f"shape={self.shape}, nvec={self.nvec}"
                )
            if self.kind == "multi_binary" and set(self.nvec) != {2}:
                raise ValueError(f"a multi_binary action space has 2 choices per entry, got nvec={self.nvec}")
        else:
            raise ValueError(f"action kind must be one of {ACTION_KINDS}, got {self.kind!r}")

    @classmethod
    def from_space(cls, space: Any) -> ActionSpec:
        """The spec of a gymnasium action space; ``ValueError`` for spaces a policy here cannot produce."""
        from gymnasium import spaces

        if isinstance(space, spaces.Discrete):
            if space.start != 0:
                raise ValueError(f"discrete action spaces must start at 0, got start={space.start}")
            return cls("discrete", n=int(space.n))
        if isinstance(space, spaces.MultiDiscrete):
            if np.any(space.start != 0):
                raise ValueError(f"multi-discrete action spaces must start at 0, got start={space.start.tolist()}")
            return cls.multi_discrete(space.nvec.ravel().tolist(), shape=tuple(int(d) for d in space.shape))
        if isinstance(space, spaces.MultiBinary):
            return cls.multi_binary(tuple(int(d) for d in space.shape))
        if isinstance(space, spaces.Box):
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise ValueError(f"a continuous action space needs finite bounds, got {space}")
            return cls(
                "box",
                shape=tuple(int(d) for d in space.shape),
                low=tuple(float(v) for v in space.low.ravel()),
                high=tuple(float(v) for v in space.high.ravel()),
            )
        raise ValueError(f"cannot act in action space {space}: expected Discrete, MultiDiscrete, MultiBinary or Box")

    def describe(self) -> str:
        """The space in a few words, for errors: ``3 discrete actions``, ``a box action of shape (1,)``, ..."""
        if self.kind == "discrete":
            return f"{self.n} discrete actions"
        if self.kind == "box":
            uniform = len(set(self.low)) == 1 and len(set(self.high)) == 1
            bounds = f"[{self.low[0]:g}, {self.high[0]:g}]" if uniform else f"low {list(self.low)}, high {list(self.high)}"
            return f"a box action of shape {self.shape} in {bounds}"
        return f"a {self.kind} action of shape {self.shape} with choices {list(self.nvec)}"

    @classmethod
    def multi_discrete(cls, nvec: tuple[int, ...] | list[int], shape: tuple[int, ...] | None = None) -> ActionSpec:
        """A ``multi_discrete`` space with ``nvec`` choices per entry (``shape`` defaults to ``(len(nvec),)``)."""
        nvec = tuple(int(n) for n in nvec)
        return cls("multi_discrete", shape=shape or (len(nvec),), nvec=nvec)

    @classmethod
    def multi_binary(cls, shape: tuple[int, ...]) -> ActionSpec:
        """A ``multi_binary`` space of ``shape`` (each entry 0 or 1)."""
        return cls("multi_binary", shape=tuple(shape), nvec=(2,) * _prod(tuple(shape)))

    @property
    def dim(self) -> int:
        """Number of action values per step: 1 for discrete, the number of entries of ``shape`` otherwise."""
        return 1 if self.kind == "discrete" else _prod(self.shape)

    @property
    def is_discrete(self) -> bool:
        """One categorical choice (``discrete``)."""
        return self.kind == "discrete"

    @property
    def is_factored(self) -> bool:
        """Several independent categorical choices (``multi_discrete`` or ``multi_binary``)."""
        return self.kind in FACTORED_KINDS

    @property
    def num_logits(self) -> int:
        """Width of the ``logits`` output: ``n``, or ``sum(nvec)`` for factored spaces (0 for box)."""
        if self.kind == "discrete":
            return self.n
        return sum(self.nvec)

    def to_env(self, action: Any) -> Any:
        """One action as the model gives it (an int, or a flat vector) in the form the environment takes."""
        if self.kind == "discrete":
            return int(action)
        if self.kind == "box":
            return np.asarray(action, dtype=np.float32).reshape(self.shape)
        dtype = np.int8 if self.kind == "multi_binary" else np.int64
        return np.asarray(action).astype(dtype).reshape(self.shape)

    def to_env_batch(self, actions: np.ndarray) -> np.ndarray:
        """Actions ``[batch]`` or ``[batch, dim]`` in the form a vector environment takes."""
        if self.kind == "discrete":
            return np.asarray(actions)
        if self.kind == "box":
            return np.asarray(actions, dtype=np.float32).reshape((-1, *self.shape))
        dtype = np.int8 if self.kind == "multi_binary" else np.int64
        return np.asarray(actions).astype(dtype).reshape((-1, *self.shape))


@dataclass(frozen=True)
class StateTensorSpec:
    """One recurrent state tensor: ``name`` and shape ``(layers, batch, hidden)``; zeros start an episode."""

    name: str
    layers: int
    hidden: int

    @property
    def shape(self) -> tuple[str | int, ...]:
        return (self.layers, "batch", self.hidden)


@dataclass(frozen=True)
class LmuSpec:
    """A Legendre memory unit's fixed memory (Voelker, Kajic and Eliasmith, 2019).

    Each layer projects its input to ``memory_inputs`` values and keeps, for each, ``order`` Legendre
    coefficients of its last ``theta`` steps (``state_m`` ``[layers, batch, memory_inputs * order]``); its
    ``hidden_size`` tanh units (``state_h``) read the input, their previous values and that memory.
    """

    order: int = 32
    """Legendre coefficients per memory input: more resolve the window more finely."""
    theta: float = 32.0
    """The window in steps: the memory holds about the last ``theta`` steps of its inputs."""
    memory_inputs: int = 2
    """Learned projections of the layer's input that the memory keeps a window of."""

    def __post_init__(self) -> None:
        if self.order < 1 or self.memory_inputs < 1 or not 0 < self.theta < float("inf"):
            raise ValueError(
                f"a Legendre memory needs order >= 1, memory_inputs >= 1 and a finite theta > 0, got order={self.order}, "
                f"memory_inputs={self.memory_inputs}, theta={self.theta}"
            )

    @property
    def width(self) -> int:
        """Values per layer in ``state_m``: ``memory_inputs * order``."""
        return self.memory_inputs * self.order


@dataclass(frozen=True)
class ObsNormSpec:
    """Observation normalisation applied inside the model: ``clip((obs - mean) / sqrt(var + eps))``."""

    mean: tuple[float, ...]
    var: tuple[float, ...]
    clip: float = 10.0
    eps: float = 1e-8


@dataclass(frozen=True)
class ImageSpec:
    """A rank-3 ``Box`` observation read by the convolutional encoder.

    ``obs`` stays the flat vector ``[batch, obs_dim]`` (the image's values in its own row-major order);
    the model reshapes it to ``layout`` (``hwc``: height, width, channels, as most environments give
    images; ``chw``: channels first) and moves channels first. An image of intensities is multiplied
    by ``scale`` (1/255 for uint8 images, 1 otherwise) before the convolutions. An image of codes
    (``codes > 0``: each value a category, such as MiniGrid's object, colour and state indices) has
    each channel read one-hot over the values ``0 .. codes - 1`` instead, so the convolutions see
    ``channels * codes`` planes of 0/1 (a value outside that range reads as all zeros).
    """

    layout: ImageLayout
    height: int
    width: int
    channels: int
    scale: float = 1.0
    codes: int = 0

    def __post_init__(self) -> None:
        if self.layout not in IMAGE_LAYOUTS:
            raise ValueError(f"image layout must be one of {IMAGE_LAYOUTS}, got {self.layout!r}")
        if min(self.height, self.width, self.channels) < 1 or not self.scale > 0:
            raise ValueError(
                f"an image needs height, width, channels >= 1 and scale > 0, got "
                f"{self.height}x{self.width}x{self.channels}, scale={self.scale}"
            )
        if self.codes < 0 or (self.codes and self.scale != 1.0):
            raise ValueError(
                f"an image's codes must be >= 0 (0: intensities), and an image of codes is not scaled, "
                f"got codes={self.codes}, scale={self.scale}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image's shape as the environment gives it."""
        if self.layout == "hwc":
            return (self.height, self.width, self.channels)
        return (self.channels, self.height, self.width)

    @property
    def size(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class PolicySpec:
    """Everything a runtime needs to feed a trained policy and read its outputs."""

    kind: PolicyKind
    cell: CellKind
    num_layers: int
    hidden_size: int
    obs_encoding: ObsEncoding
    action: ActionSpec
    num_cores: int = 1
    """1 when actor and critic share the recurrent core (and for Q-networks), 2 when separate."""
    obs_norm: ObsNormSpec | None = None
    env_id: str = ""
    algo: str = ""
    image: ImageSpec | None = None
    """Set when the observation is an image read by the convolutional encoder; None: an MLP over ``obs``."""
    env_wrappers: tuple[str, ...] = ()
    """The ``--wrapper`` values (``module:Callable[:key=value,...]``) applied, in order, to ``env_id`` in training."""
    lmu: LmuSpec | None = None
    """The Legendre memory of an ``lmu`` cell (set exactly when ``cell == "lmu"``)."""
    initial_state: str = "zeros"
    """How an episode's state starts: always ``zeros`` (``episode_start=1`` does the same inside the graph)."""

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy kind must be one of {POLICY_KINDS}, got {self.kind!r}")
        if self.cell not in CELL_KINDS:
            raise ValueError(f"cell must be one of {CELL_KINDS}, got {self.cell!r}")
        if self.num_layers < 1 or self.hidden_size < 1 or self.num_cores not in (1, 2):
            raise ValueError(
                f"need num_layers >= 1, hidden_size >= 1 and num_cores in (1, 2), got "
                f"{self.num_layers}, {self.hidden_size}, {self.num_cores}"
            )
        if (self.cell == "lmu") != (self.lmu is not None):
            raise ValueError(f"a Legendre memory (lmu) is set exactly for cell 'lmu', got cell {self.cell!r} with lmu={self.lmu}")
        if self.kind == "q" and not self.action.is_discrete:
            raise ValueError(f"a Q-network needs a discrete action space, got {self.action.kind}")
        if self.image is not None and self.image.size != self.obs_dim:
            raise ValueError(
                f"image {self.image.shape} holds {self.image.size} values, but the observation has {self.obs_dim}"
            )

    @property
    def format_version(self) -> int:
        """The lowest spec format that describes this policy: 3 for a Legendre memory cell, 2 for factored
        actions or an image encoder, else 1."""
        if self.lmu is not None:
            return 3
        return 2 if self.action.is_factored or self.image is not None else 1

    @property
    def obs_dim(self) -> int:
        """Length of the encoded observation vector the model takes: input ``obs`` is ``[batch, obs_dim]``."""
        return self.obs_encoding.flat_dim

    @property
    def state_tensors(self) -> tuple[StateTensorSpec, ...]:
        """The state inputs in graph order: ``state_h`` then, for LSTM, ``state_c`` (same width) or, for LMU,
        ``state_m`` (the memory, ``lmu.width`` wide)."""
        layers = self.num_layers * self.num_cores
        h = StateTensorSpec(STATE_H, layers, self.hidden_size)
        if self.cell == "lstm":
            return (h, StateTensorSpec(STATE_C, layers, self.hidden_size))
        if self.lmu is not None:
            return (h, StateTensorSpec(STATE_M, layers, self.lmu.width))
        return (h,)

    @property
    def input_names(self) -> tuple[str, ...]:
        return (OBS, EPISODE_START) + tuple(s.name for s in self.state_tensors)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.kind == "q":
            head: tuple[str, ...] = (Q_VALUES, ACTION)
        elif self.action.is_discrete or self.action.is_factored:
            head = (LOGITS, ACTION, VALUE)
        else:
            head = (MEAN, LOG_STD, ACTION, VALUE)
        return head + tuple("next_" + s.name for s in self.state_tensors)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["format_version"] = self.format_version
        if self.image is None:
            del out["image"]  # a version-1 spec has no such key
        if self.lmu is None:
            del out["lmu"]
        if not self.action.is_factored:
            del out["action"]["nvec"]
        out["obs_encoding"] = self.obs_encoding.to_dict()
        out["state_tensors"] = [
            {"name": s.name, "shape": list(s.shape)} for s in self.state_tensors
        ]
        out["inputs"] = list(self.input_names)
        out["outputs"] = list(self.output_names)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicySpec:
        if not isinstance(data, dict):
            raise ValueError(f"a policy spec must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"policy spec format version {version!r} is not supported "
                f"(this rnnpolicy reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))})"
            )
        try:
            action = data["action"]
            norm = data.get("obs_norm")
            image = data.get("image")
            lmu = data.get("lmu")
            return cls(
                kind=data["kind"],
                cell=data["cell"],
                num_layers=int(data["num_layers"]),
                hidden_size=int(data["hidden_size"]),
                num_cores=int(data.get("num_cores", 1)),
                obs_encoding=ObsEncoding.from_dict(data["obs_encoding"]),
                action=ActionSpec(
                    kind=action["kind"],
                    n=int(action.get("n", 0)),
                    shape=tuple(int(d) for d in action.get("shape", ())),
                    low=tuple(float(v) for v in action.get("low", ())),
                    high=tuple(float(v) for v in action.get("high", ())),
                    nvec=tuple(int(n) for n in action.get("nvec", ())),
                ),
                obs_norm=None
                if norm is None
                else ObsNormSpec(
                    mean=tuple(float(v) for v in norm["mean"]),
                    var=tuple(float(v) for v in norm["var"]),
                    clip=float(norm.get("clip", 10.0)),
                    eps=float(norm.get("eps", 1e-8)),
                ),
                env_id=str(data.get("env_id", "")),
                algo=str(data.get("algo", "")),
                image=None
                if image is None
                else ImageSpec(
                    layout=image["layout"],
                    height=int(image["height"]),
                    width=int(image["width"]),
                    channels=int(image["channels"]),
                    scale=float(image.get("scale", 1.0)),
                    codes=int(image.get("codes", 0)),
                ),
                env_wrappers=tuple(str(w) for w in data.get("env_wrappers", ())),
                lmu=None
                if lmu is None
                else LmuSpec(order=int(lmu["order"]), theta=float(lmu["theta"]), memory_inputs=int(lmu["memory_inputs"])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"policy spec is missing or has a malformed field: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> PolicySpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"policy spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out if shape else 0
