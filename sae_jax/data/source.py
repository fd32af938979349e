"""The activation-source interface the trainer reads from, and its in-memory / .npy forms.

A source is a 2-D table of activation rows ``(n_rows, d_in)``. The loader asks for rows by
index; a source returns them as float32 NumPy. Stores on disk (``store.py``) implement the
same three members, so the trainer never knows where rows come from.
"""
from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sae_jax.errors import DataError


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
    """An activation source held in memory (tests, synthetic data, small runs).

    ``cast``: accept a non-floating array (integers, booleans) and read it as float32; by default
    such an array is refused, since activations are floats and integers usually mean the wrong file."""

    def __init__(self, array: np.ndarray, metadata: dict[str, Any] | None = None, cast: bool = False):
        array = np.asarray(array)
        where = (metadata or {}).get("path", "activation array")
        if array.dtype.kind != "f" and not cast:
            raise DataError(f"{where} holds {array.dtype} values, not floating-point activations; "
                            "pass --data.cast (cast=True) to read them as float32 if they really are activations")
        if array.dtype.kind not in "fiub":
            raise DataError(f"{where} holds {array.dtype} values, which cannot be read as float32 activations")
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


def _npy_problem(path: str) -> str | None:
    """Why ``path`` is not a readable .npy file (None when its header and size agree)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return "is empty (0 bytes)"
        if f.read(6) != b"\x93NUMPY":
            return "is not a .npy file (no NumPy header); write activations with numpy.save"
        f.seek(0)
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except (ValueError, EOFError, SyntaxError) as err:
            return f"has a damaged .npy header ({err})"
        if dtype.hasobject:
            return "holds Python objects (a pickled array), not numbers; save a float array with numpy.save"
        needed = f.tell() + int(np.prod(shape)) * dtype.itemsize
        if size < needed:
            return (f"is truncated: its header says shape {shape} {dtype} ({needed} bytes) but the file has {size}; "
                    "it was cut while being written: write it again")
    return None


def npy_source(path: str, cast: bool = False) -> ArraySource:
    """A memory-mapped ``.npy`` file of shape ``(n_rows, d_in)`` (``cast``: see ``ArraySource``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no .npy activation file at {path!r}")
    problem = _npy_problem(path)
    if problem:
        raise DataError(f"{path} {problem}")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return ArraySource(array, {"path": str(path)}, cast=cast)
