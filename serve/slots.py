"""One model version's session state arrays, and the only code that indexes them.

Each state tensor of a model lives in one preallocated array ``(layers, capacity, hidden)``, one
slot (column) per session, beside a ``(capacity, width)`` array of each session's cached last
packed output row (it answers a repeated seq). Everything else reads and writes a session's
state through :class:`SlotArrays`: a slot's rows (:meth:`read`, :meth:`write`, :meth:`zero`), its
cached row (:meth:`cached`), and, for the step path, the inputs of a batch (:meth:`gather`,
:meth:`inputs`) and its results (:meth:`scatter`, :meth:`scatter_one`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SlotArrays"]


class SlotArrays:
    """One model version's per-session state arrays and cached output rows, indexed by slot."""

    def __init__(self, state_shapes: Sequence[tuple[int, int]], out_width: int, capacity: int) -> None:
        # np.zeros maps untouched pages lazily: an unused slot costs no resident memory.
        self._state = tuple(np.zeros((layers, capacity, hidden), dtype=np.float32) for layers, hidden in state_shapes)
        self._last_out = np.zeros((capacity, out_width), dtype=np.float32)
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))  # a stack: reuse recently used (resident) slots
        # A slot's state as a slice (layers, 1, hidden) is contiguous only for one layer; otherwise copy it.
        self._contiguous_slices = all(layers == 1 for layers, _ in state_shapes)
        self.bytes_per_slot = (sum(a.itemsize * a.shape[0] * a.shape[2] for a in self._state)
                               + self._last_out.itemsize * out_width)
        """Memory one session's state rows and cached output row take."""

    # ------------------------------------------------------------------ allocation

    def take(self) -> int:
        """A free slot, its state zeroed; ``ValueError`` when all ``capacity`` slots are taken."""
        if not self._free:
            raise ValueError(f"all {self.capacity} state slots are taken")
        slot = self._free.pop()
        self.zero(slot)
        return slot

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def free(self) -> int:
        """Slots not taken."""
        return len(self._free)

    # ------------------------------------------------------------------ one session

    def zero(self, slot: int) -> None:
        """Zero a slot's state (its next step starts an episode); the cached row stays."""
        for array in self._state:
            array[:, slot, :] = 0.0

    def read(self, slot: int) -> tuple[np.ndarray, ...]:
        """Copies of a slot's state rows, each ``(layers, hidden)``."""
        return tuple(a[:, slot, :].copy() for a in self._state)

    def write(self, slot: int, rows: Sequence[np.ndarray]) -> None:
        """Set a slot's state rows (each ``(layers, hidden)``, shapes checked by the caller)."""
        for array, row in zip(self._state, rows):
            array[:, slot, :] = row

    def cached(self, slot: int) -> np.ndarray:
        """A copy of a slot's cached last output row ``(width,)``."""
        return self._last_out[slot].copy()

    def set_cached(self, slot: int, row: np.ndarray) -> None:
        self._last_out[slot] = row

    # ------------------------------------------------------------------ the step path

    def inputs(self, slot: int) -> tuple[np.ndarray, ...]:
        """One slot's state as step inputs, each ``(layers, 1, hidden)`` (a view where contiguous)."""
        rows = slice(slot, slot + 1)
        if self._contiguous_slices:
            return tuple(a[:, rows, :] for a in self._state)
        return tuple(np.ascontiguousarray(a[:, rows, :]) for a in self._state)

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """The state of ``slots`` ``(k,)`` as step inputs, each ``(layers, k, hidden)`` (copies)."""
        return tuple(a[:, slots, :] for a in self._state)

    def scatter(self, slots: np.ndarray, next_state: Sequence[np.ndarray], packed: np.ndarray) -> None:
        """Write a batch's results: ``next_state`` each ``(layers, k, hidden)``, ``packed`` output rows ``(k, width)``."""
        for array, nxt in zip(self._state, next_state):
            array[:, slots, :] = nxt
        self._last_out[slots] = packed

    def scatter_one(self, slot: int, next_state: Sequence[np.ndarray], packed: np.ndarray) -> None:
        """:meth:`scatter` for one slot (slices, no index arrays): ``next_state`` each ``(layers, 1, hidden)``,
        ``packed`` ``(1, width)``."""
        rows = slice(slot, slot + 1)
        for array, nxt in zip(self._state, next_state):
            array[:, rows, :] = nxt
        self._last_out[slot] = packed[0]
