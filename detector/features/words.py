"""16-bit words of classic payloads, in both byte orders.

Couplings within a frame (``baseline``) and across ids (``cross_signals``) both
look for physical quantities sent as 16-bit words; one definition of what a word
is keeps the two from disagreeing on byte order.
"""

from __future__ import annotations

import numpy as np


def words16(d: np.ndarray) -> np.ndarray:
    """(n, 2, 7) int32: the 16-bit value at each byte offset 0..6 of payloads ``d``
    (n, 8), big-endian [:, 0] and little-endian [:, 1]."""
    d = d.astype(np.int32)
    return np.stack([d[:, :7] * 256 + d[:, 1:], d[:, 1:] * 256 + d[:, :7]], axis=1)


def word(words: np.ndarray, at: int, big_endian: bool) -> np.ndarray:
    """The word at byte ``at`` (little-endian: bytes at (low) and at + 1) of ``words``
    (``words16``'s result)."""
    return words[:, 0 if big_endian else 1, at]
