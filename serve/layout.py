"""Where each head output of a model lives in one packed float32 row per step.

A step's outputs (``q_values`` or ``logits`` or ``mean``/``log_std``, ``action``, ``value``) are
packed side by side into a row ``[width]``; the session store caches the last row per session
(to answer a repeated seq) and the servicer unpacks rows into protobuf fields.
"""

from __future__ import annotations

import numpy as np

from rnnpolicy.spec import ACTION, LOG_STD, LOGITS, MEAN, Q_VALUES, VALUE, PolicySpec

__all__ = ["OutputLayout"]


class OutputLayout:
    """Column ranges of the head outputs in a packed step row."""

    def __init__(self, spec: PolicySpec, head_names: tuple[str, ...]) -> None:
        self.spec = spec
        self.names = head_names
        widths = {Q_VALUES: spec.action.n, LOGITS: spec.action.num_logits, MEAN: spec.action.dim,
                  LOG_STD: spec.action.dim, ACTION: spec.action.dim, VALUE: 1}
        self.columns: dict[str, slice] = {}
        start = 0
        for name in head_names:
            if name not in widths:
                raise ValueError(f"unknown head output {name!r}; expected some of {sorted(widths)}")
            self.columns[name] = slice(start, start + widths[name])
            start += widths[name]
        self.width = start
        self.discrete = spec.action.is_discrete
        self.factored = spec.action.is_factored
        # (column slice, head index) per head output, and (field, how, slice) per StepResponse field,
        # worked out once so the per-step code only slices.
        self._pack_plan = [(self.columns[name], i) for i, name in enumerate(head_names)]
        self._step_plan: list[tuple[str, str, slice]] = []
        for name, cols in self.columns.items():
            if name == ACTION:
                if self.factored:
                    self._step_plan.append(("multi_action", "ints", cols))
                else:
                    self._step_plan.append(("discrete_action", "int", cols) if self.discrete
                                           else ("continuous_action", "list", cols))
            elif name == VALUE:
                self._step_plan.append(("value", "float", cols))
            else:
                self._step_plan.append((name, "list", cols))

    def pack(self, head: dict[str, np.ndarray], batch: int) -> np.ndarray:
        """The graph's head outputs ``{name: [batch, ...]}`` as rows ``[batch, width]`` float32."""
        return np.concatenate(
            [np.asarray(head[n], dtype=np.float32).reshape(batch, -1) for n in self.names], axis=1
        )

    def pack_values(self, values: list[np.ndarray], batch: int) -> np.ndarray:
        """Like :meth:`pack`, from the head outputs as a list in ``names`` order (state outputs may follow)."""
        out = np.empty((batch, self.width), dtype=np.float32)
        for cols, i in self._pack_plan:
            out[:, cols] = values[i].reshape(batch, -1)
        return out

    def step_fields(self, row: np.ndarray) -> dict[str, object]:
        """Keyword fields of a ``StepResponse`` for one packed row."""
        values = row.tolist()  # one conversion; the fields are slices of it
        fields: dict[str, object] = {}
        for field, how, cols in self._step_plan:
            if how == "list":
                fields[field] = values[cols]
            elif how == "int":
                fields[field] = int(values[cols.start])
            elif how == "ints":
                fields[field] = [int(v) for v in values[cols]]
            else:
                fields[field] = values[cols.start]
        return fields

    def batch_fields(self, rows: np.ndarray) -> dict[str, object]:
        """Keyword fields of a ``StepBatchResponse`` for packed rows ``[n, width]`` (flattened, row-major)."""
        fields: dict[str, object] = {}
        for name, cols in self.columns.items():
            part = rows[:, cols]
            if name == ACTION:
                if self.factored:
                    fields["multi_actions"] = part.astype(np.int64).ravel().tolist()
                elif self.discrete:
                    fields["discrete_actions"] = part[:, 0].astype(np.int64).tolist()
                else:
                    fields["continuous_actions"] = part.ravel().tolist()
            elif name == VALUE:
                fields["values"] = part[:, 0].tolist()
            else:
                fields[name] = part.ravel().tolist()
        return fields
