"""Matching two lists of event times (audio onsets vs visual events), shared by AV-Align and the demo's sync score."""

from __future__ import annotations

import numpy as np

# Times come from frame indices / fps and sample indices / rate: a pair exactly one frame apart may compute as
# 0.10000000000000009 s. The slack keeps "within one frame" inclusive.
SLACK = 1e-9


def match_events(a: np.ndarray, b: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) with |a[i] - b[j]| <= tolerance, as many as possible; `a` and `b` sorted.

    A two-pointer sweep: on a line, pairing the earliest unmatched events first is a maximum matching.
    """
    pairs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if abs(a[i] - b[j]) <= tolerance + SLACK:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return pairs
