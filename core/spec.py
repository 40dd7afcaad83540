"""The policy spec: a torch-free description of a trained policy that every stage reads.

The trainer writes it into each checkpoint, the exporter embeds it in every exported
file (ONNX ``metadata_props`` key ``rnnpolicy.spec``, TorchScript extra file
``spec.json``), and the server and clients read it to check and encode observations.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rnnpolicy.encoding import ObsEncoding

FORMAT_VERSION = 1
SPEC_METADATA_KEY = "rnnpolicy.spec"

PolicyKind = Literal["q", "policy"]
CellKind = Literal["lstm", "gru", "ff"]

POLICY_KINDS: tuple[str, ...] = ("q", "policy")
CELL_KINDS: tuple[str, ...] = ("lstm", "gru", "ff")

# The exported graph's input and output names: one place, used by trainer, exporter,
# server and clients alike.
OBS = "obs"
EPISODE_START = "episode_start"
STATE_H = "state_h"
STATE_C = "state_c"
NEXT_STATE_H = "next_state_h"
NEXT_STATE_C = "next_state_c"
Q_VALUES = "q_values"
LOGITS = "logits"
MEAN = "mean"
LOG_STD = "log_std"
VALUE = "value"
ACTION = "action"


@dataclass(frozen=True)
class ActionSpec:
    """The action space: ``discrete`` with ``n`` actions, or a ``box`` of ``shape`` in [low, high]."""

    kind: Literal["discrete", "box"]
    n: int = 0
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

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
        else:
            raise ValueError(f"action kind must be 'discrete' or 'box', got {self.kind!r}")

    @property
    def dim(self) -> int:
        """Number of action values per step: 1 for discrete, the box size otherwise."""
        return 1 if self.kind == "discrete" else _prod(self.shape)

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"


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
class ObsNormSpec:
    """Observation normalisation applied inside the model: ``clip((obs - mean) / sqrt(var + eps))``."""

    mean: tuple[float, ...]
    var: tuple[float, ...]
    clip: float = 10.0
    eps: float = 1e-8


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
    env_wrappers: tuple[str, ...] = ()
    """The ``--wrapper`` values (``module:Callable[:key=value,...]``) applied, in order, to ``env_id`` in training."""
    format_version: int = FORMAT_VERSION
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
        if self.kind == "q" and not self.action.is_discrete:
            raise ValueError("a Q-network needs a discrete action space, got a box")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"policy spec format version {self.format_version} is not supported "
                f"(this rnnpolicy reads version {FORMAT_VERSION})"
            )

    @property
    def obs_dim(self) -> int:
        """Length of the encoded observation vector the model takes: input ``obs`` is ``[batch, obs_dim]``."""
        return self.obs_encoding.flat_dim

    @property
    def state_tensors(self) -> tuple[StateTensorSpec, ...]:
        """The state inputs in graph order (``state_h`` then, for LSTM, ``state_c``)."""
        layers = self.num_layers * self.num_cores
        names = (STATE_H, STATE_C) if self.cell == "lstm" else (STATE_H,)
        return tuple(StateTensorSpec(name, layers, self.hidden_size) for name in names)

    @property
    def input_names(self) -> tuple[str, ...]:
        return (OBS, EPISODE_START) + tuple(s.name for s in self.state_tensors)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.kind == "q":
            head: tuple[str, ...] = (Q_VALUES, ACTION)
        elif self.action.is_discrete:
            head = (LOGITS, ACTION, VALUE)
        else:
            head = (MEAN, LOG_STD, ACTION, VALUE)
        return head + tuple("next_" + s.name for s in self.state_tensors)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
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
        if version != FORMAT_VERSION:
            raise ValueError(
                f"policy spec format version {version!r} is not supported "
                f"(this rnnpolicy reads version {FORMAT_VERSION})"
            )
        try:
            action = data["action"]
            norm = data.get("obs_norm")
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
                env_wrappers=tuple(str(w) for w in data.get("env_wrappers", ())),
                format_version=int(version),
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
