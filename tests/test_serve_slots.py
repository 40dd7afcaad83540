"""SlotArrays: the only code that indexes a model's per-session state arrays."""

from __future__ import annotations

import numpy as np
import pytest

from rnnpolicy.serve.slots import SlotArrays


def test_take_zeroes_and_give_back_reuses_the_most_recent_slot():
    slots = SlotArrays([(2, 3)], 4, capacity=2)
    a = slots.take()
    slots.write(a, (np.ones((2, 3), np.float32),))
    slots.give_back(a)
    assert slots.take() == a and not slots.read(a)[0].any()  # zeroed when taken again
    slots.take()
    with pytest.raises(ValueError, match="all 2 state slots are taken"):
        slots.take()


def test_gather_and_scatter_move_rows_of_the_given_slots_only():
    slots = SlotArrays([(2, 3), (2, 3)], 4, capacity=4)
    ids = [slots.take() for _ in range(4)]
    for i in ids:
        slots.write(i, (np.full((2, 3), i, np.float32), np.full((2, 3), -i, np.float32)))
    chosen = np.array([ids[3], ids[1]])
    h, c = slots.gather(chosen)
    assert h.shape == (2, 2, 3) and h[0, 0, 0] == ids[3] and c[1, 1, 2] == -ids[1]
    slots.scatter(chosen, (h + 10, c - 10), np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.float32))
    assert slots.read(ids[3])[0][0, 0] == ids[3] + 10 and slots.read(ids[0])[0][0, 0] == ids[0]
    assert np.array_equal(slots.cached(ids[1]), [2, 2, 2, 2]) and not slots.cached(ids[0]).any()


def test_one_slot_inputs_and_scatter_one_match_the_batch_path():
    slots = SlotArrays([(1, 3), (2, 3)], 2, capacity=3)
    slot = slots.take()
    slots.write(slot, (np.ones((1, 3), np.float32), np.full((2, 3), 2, np.float32)))
    h, c = slots.inputs(slot)
    assert h.shape == (1, 1, 3) and c.shape == (2, 1, 3) and c.flags.c_contiguous
    slots.scatter_one(slot, (h * 3, c * 3), np.array([[5, 6]], np.float32))
    assert slots.read(slot)[1][0, 0] == 6 and np.array_equal(slots.cached(slot), [5, 6])
    assert slots.bytes_per_slot == 4 * (3 + 6 + 2)
