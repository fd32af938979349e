"""The activation-source interface the trainer reads from, and its in-memory / .npy forms.

A source is a 2-D table of activation rows ``(n_rows, d_in)``. The loader asks for rows by
index; a source returns them as float32 NumPy. Stores on disk (``store.py``) implement the
same three members, so the trainer never knows where rows come from.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ActivationSource(Protocol):
    """Anything with a row count, a width and a row reader."""

    n_rows: int
    d_in: int

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows at the given int64 indices, as float32 ``[len(rows), d_in]``, in that order."""
        ...

    @property
    def metadata(self) -> dict[str, Any]:
        """Provenance and statistics (may be empty)."""
        ...


class ArraySource:
    """An activation source held in memory (tests, synthetic data, small runs)."""

    def __init__(self, array: np.ndarray, metadata: dict[str, Any] | None = None):
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(
                f"activation array must be 2-D (n_rows, d_in), got shape {array.shape}; "
                "reshape token activations to one row per token"
            )
        if array.shape[0] == 0:
            raise ValueError("activation array has no rows")
        self._array = array
        self.n_rows, self.d_in = (int(s) for s in array.shape)
        self._metadata = dict(metadata or {})

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._array[rows], dtype=np.float32)


class RowRange:
    """Rows ``[start, stop)`` of another source, renumbered from 0 (e.g. a training split)."""

    def __init__(self, source: ActivationSource, start: int, stop: int):
        if not 0 <= start < stop <= source.n_rows:
            raise ValueError(f"row range [{start}, {stop}) is empty or outside the source's {source.n_rows} rows")
        self.source, self.start = source, start
        self.n_rows, self.d_in = stop - start, source.d_in

    @property
    def metadata(self) -> dict[str, Any]:
        return self.source.metadata

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.source.read(np.asarray(rows, np.int64) + self.start)


def npy_source(path: str) -> ArraySource:
    """A memory-mapped ``.npy`` file of shape ``(n_rows, d_in)``."""
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"no .npy activation file at {path!r}") from None
    return ArraySource(array, {"path": str(path)})
