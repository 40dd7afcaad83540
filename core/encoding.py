"""Observation encoding: raw gymnasium observations to the flat float32 vector a model takes.

``Box`` parts are flattened, ``Discrete`` and ``MultiDiscrete`` parts are one-hot encoded,
and ``Tuple``/``Dict`` spaces are walked in order (``Dict`` keys sorted, as gymnasium does).
The encoding is recorded in the policy spec so that the trainer, the server and every client
encode a raw observation the same way. Numpy only: no torch, gymnasium only to read a space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

PartKind = Literal["box", "discrete", "multi_discrete"]


@dataclass(frozen=True)
class ObsPart:
    """One leaf of the observation space and where its values go in the flat vector."""

    kind: PartKind
    path: tuple[str, ...]
    """Keys (for Dict) or indices (for Tuple) from the root observation to this leaf."""
    shape: tuple[int, ...] = ()
    """Box shape; empty for discrete parts."""
    nvec: tuple[int, ...] = ()
    """Number of values of each discrete entry (one entry for Discrete)."""
    start: tuple[int, ...] = ()
    """Lowest value of each discrete entry (gymnasium's ``start``)."""

    @property
    def width(self) -> int:
        if self.kind == "box":
            return int(np.prod(self.shape)) if self.shape else 1
        return int(sum(self.nvec))


@dataclass(frozen=True)
class ObsEncoding:
    """How a raw observation becomes the model's ``obs`` input ``[batch, flat_dim]``."""

    parts: tuple[ObsPart, ...]

    @property
    def flat_dim(self) -> int:
        return sum(part.width for part in self.parts)

    @property
    def is_flat_box(self) -> bool:
        """True when the raw observation already is the model input, up to a reshape."""
        return len(self.parts) == 1 and self.parts[0].kind == "box" and not self.parts[0].path

    def encode(self, obs: Any) -> np.ndarray:
        """Encode one raw observation to a float32 vector of length ``flat_dim``."""
        return self.encode_batch(_add_batch_axis(obs))[0]

    def encode_batch(self, obs: Any) -> np.ndarray:
        """Encode a batch of raw observations (as a gymnasium vector env returns them) to ``[batch, flat_dim]``."""
        columns = []
        for part in self.parts:
            leaf = obs
            for key in part.path:
                leaf = leaf[int(key)] if isinstance(leaf, (tuple, list)) else leaf[key]
            leaf = np.asarray(leaf)
            if part.kind == "box":
                columns.append(leaf.reshape(leaf.shape[0], -1).astype(np.float32, copy=False))
            else:
                values = leaf.reshape(leaf.shape[0], -1).astype(np.int64) - np.asarray(part.start)
                if values.shape[1] != len(part.nvec):
                    raise ValueError(
                        f"observation part {'/'.join(part.path) or '<root>'} has "
                        f"{values.shape[1]} discrete entries, expected {len(part.nvec)}"
                    )
                for j, n in enumerate(part.nvec):
                    col = values[:, j]
                    if col.min(initial=0) < 0 or col.max(initial=0) >= n:
                        raise ValueError(
                            f"observation part {'/'.join(part.path) or '<root>'} entry {j} "
                            f"must lie in [{part.start[j]}, {part.start[j] + n - 1}], got {col + part.start[j]}"
                        )
                    columns.append(np.eye(n, dtype=np.float32)[col])
        return np.concatenate(columns, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flat_dim": self.flat_dim,
            "parts": [
                {
                    "kind": p.kind,
                    "path": list(p.path),
                    "shape": list(p.shape),
                    "nvec": list(p.nvec),
                    "start": list(p.start),
                }
                for p in self.parts
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObsEncoding:
        parts = tuple(
            ObsPart(
                kind=p["kind"],
                path=tuple(str(k) for k in p["path"]),
                shape=tuple(int(d) for d in p["shape"]),
                nvec=tuple(int(n) for n in p["nvec"]),
                start=tuple(int(s) for s in p["start"]),
            )
            for p in data["parts"]
        )
        for p in parts:
            if p.kind not in ("box", "discrete", "multi_discrete"):
                raise ValueError(f"unknown observation part kind {p.kind!r}")
        return cls(parts)

    @classmethod
    def from_space(cls, space: Any) -> ObsEncoding:
        """Build the encoding of a gymnasium observation space; ``ValueError`` for spaces it cannot encode."""
        return cls(tuple(_parts(space, ())))

    @classmethod
    def flat(cls, dim: int) -> ObsEncoding:
        """The encoding of a plain float vector of length ``dim``."""
        return cls((ObsPart("box", (), (dim,)),))


def _parts(space: Any, path: tuple[str, ...]) -> list[ObsPart]:
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return [ObsPart("box", path, tuple(int(d) for d in space.shape))]
    if isinstance(space, spaces.Discrete):
        return [ObsPart("discrete", path, (), (int(space.n),), (int(space.start),))]
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return [ObsPart("multi_discrete", path, (), (2,) * n, (0,) * n)]
    if isinstance(space, spaces.MultiDiscrete):
        nvec = tuple(int(n) for n in np.asarray(space.nvec).ravel())
        start = tuple(int(s) for s in np.asarray(space.start).ravel())
        return [ObsPart("multi_discrete", path, (), nvec, start)]
    if isinstance(space, spaces.Tuple):
        return [p for i, sub in enumerate(space.spaces) for p in _parts(sub, path + (str(i),))]
    if isinstance(space, spaces.Dict):
        return [p for key, sub in space.spaces.items() for p in _parts(sub, path + (str(key),))]
    where = f" (the observation's entry {'/'.join(path)!r})" if path else ""
    raise ValueError(
        f"cannot encode observation space {space!r}{where}: expected Box, Discrete, MultiBinary, "
        f"MultiDiscrete, or a Tuple/Dict of these"
    )


def _add_batch_axis(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: _add_batch_axis(v) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_add_batch_axis(v) for v in obs)
    return np.asarray(obs)[None]
