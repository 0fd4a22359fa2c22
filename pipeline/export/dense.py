"""Label values as dense indices, so no writer allocates by the largest value.

A label map may hold any value up to ``deconvseg.pipeline.io.checks.MAX_LABEL`` (uint32). Lookup
tables, ``np.bincount`` and ``ndimage.find_objects`` all allocate one entry per value up to the
largest, which for a value near 2^31 means gigabytes. ``dense_labels`` maps the values that occur
(and those a table names) to ``0..K-1`` in sorted order; maps whose values are small keep their
array as it is (the identity mapping), so the usual case costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deconvseg.pipeline.io.checks import label_dtype

DIRECT_LIMIT = 1 << 16  # below this largest value a value is its own index


def dense_labels(array: np.ndarray, values: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The map as dense indices and the sorted label values they stand for.

    Args:
        array: a non-negative integer label map.
        values: further label values to give an index (e.g. a table's, present or not).

    Returns:
        ``(index, keys)``: ``keys[index] == array`` everywhere; ``keys`` is sorted and starts at 0.
        Find the index of a value with ``index_of(keys, value)``.
    """
    values = [int(v) for v in values]
    high = max(int(array.max(initial=0)), max(values, default=0))
    if high < DIRECT_LIMIT:
        return array, np.arange(high + 1)
    keys = np.union1d(np.unique(array), np.asarray([0, *values], dtype=np.int64))
    return np.searchsorted(keys, array).astype(label_dtype(len(keys) - 1)), keys


def index_of(keys: np.ndarray, value: int) -> int:
    """The dense index of a label value (``value`` must be among ``keys``)."""
    return int(np.searchsorted(keys, value))
