"""Counters in a CAN id's payload: a field of one byte that steps by a constant from
frame to frame (a message counter, an alive counter), learned from one vehicle's
consecutive benign frames. The feature kernels check the learned step on every frame.
"""

from __future__ import annotations

import numpy as np

#: Counter candidates: (mask, shift) of a field inside one byte.
COUNTER_FIELDS = ((0xFF, 0), (0x0F, 0), (0xF0, 4), (0x03, 0), (0x0C, 2), (0x30, 4), (0xC0, 6))


def learn_counters(data: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Up to two (byte, mask, shift, step): fields in different bytes that step by a
    constant, widest first. A frame breaks the counters only when it breaks every one:
    a mode of the car may give one of them another meaning (a gear byte's low nibble),
    a forged or replayed frame breaks them all."""
    if len(data) < 20:
        return []
    best: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
    for b in range(8):
        col = data[:, b].astype(np.int32)
        for mask, shift in COUNTER_FIELDS:
            field = (col & mask) >> shift
            modulus = (mask >> shift) + 1
            if np.count_nonzero(np.bincount(field, minlength=modulus)) < min(modulus, 4):
                continue
            step = np.diff(field) % modulus
            counts = np.bincount(step, minlength=modulus)
            top = int(np.argmax(counts))
            if top == 0 or counts[top] < 0.97 * len(step):
                continue
            bits = bin(mask).count("1")
            if bits > best.get(b, (0,))[0]:
                best[b] = (bits, (b, mask, shift, top))
    ranked = sorted(best.values(), key=lambda v: (-v[0], v[1][0]))
    return [field for _, field in ranked[:2]]
