"""HDF5 files of pandas (DeepLabCut labels and outputs): safe to read, readable by pandas 2 and 3.

pandas' ``table`` format keeps some metadata as pickled HDF5 attributes, which PyTables
unpickles when pandas reads them, and its ``fixed`` format pickles object columns: a crafted
file could run code on import. :func:`check_no_code` reads the raw bytes with h5py (which never
unpickles) and refuses any pickle that could call code, before pandas opens the file.

pandas 3 no longer writes the ``pandas_version`` attribute that pandas 2 (DeepLabCut 3.0,
movement) needs to find the columns of a table; :func:`write_hdf` adds it.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import numpy as np
import pandas as pd

#: pickle opcodes that import or call something: a pickle without them only builds lists,
#: dicts, tuples, strings and numbers.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ",
                 "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}
#: what pandas 2 writes as ``pandas_version`` (the last change of its HDF5 layout).
PANDAS_HDF_VERSION = "0.15.2"


class UnsafeFileError(ValueError):
    """A file holding content that would run code when read."""


def _pickle_calls_code(data: bytes) -> str | None:
    """The first code-calling opcode of a pickle, or None (also None for non-pickles).

    Any protocol: PyTables pickles attributes with protocol 0 (text) and unpickles every
    string attribute that parses as a pickle.
    """
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _CODE_OPCODES:
                return f"{opcode.name} {arg!r}" if arg is not None else opcode.name
    except Exception:  # not a valid pickle: PyTables will not unpickle it either
        return None
    return None


def check_no_code(path: str | Path) -> None:
    """Refuse an HDF5 file with pickled objects that could run code when read.

    Raises
    ------
    UnsafeFileError
        Naming the file, the node and what the pickle would call.
    ValueError
        When the file is not HDF5.
    """
    import h5py

    path = Path(path)
    problems: list[str] = []

    def attr_bytes(value) -> bytes | None:
        if isinstance(value, bytes):
            return value
        if isinstance(value, np.void):
            return value.tobytes()
        if isinstance(value, np.ndarray) and value.dtype.kind in ("S", "V", "O") and value.size == 1:
            item = value.reshape(-1)[0]
            return item if isinstance(item, bytes) else bytes(item) if value.dtype.kind == "V" else None
        return None

    def visit(name: str, obj) -> None:
        for key in obj.attrs:
            try:
                raw = attr_bytes(obj.attrs[key])
            except Exception:  # attributes of types h5py cannot read are not pickles
                continue
            # PyTables unpickles exactly the string attributes that end with "."
            found = _pickle_calls_code(raw) if raw and raw.endswith(b".") else None
            if found:
                problems.append(f"attribute {key!r} of /{name} calls {found}")
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "O" and h5py.check_vlen_dtype(
                obj.dtype) is not None and h5py.check_vlen_dtype(obj.dtype) not in (str, bytes):
            base = h5py.check_vlen_dtype(obj.dtype)
            if np.dtype(base) == np.uint8 and obj.size:  # PyTables ObjectAtom: pickles
                for i, item in enumerate(obj[: min(obj.shape[0], 10_000)]):
                    found = _pickle_calls_code(bytes(item))
                    if found:
                        problems.append(f"row {i} of /{name} calls {found}")
                        break

    try:
        with h5py.File(path, "r") as f:
            visit("", f)
            f.visititems(visit)
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file: {error}") from error
    if problems:
        raise UnsafeFileError(
            f"{path} holds pickled objects that would run code when read ({problems[0]}"
            + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "")
            + "). It was not read. Re-export it from the tool that made it, or convert it to "
              "CSV.")


def read_hdf(path: str | Path, key: str | None = None) -> pd.DataFrame:
    """``pd.read_hdf`` after :func:`check_no_code`."""
    check_no_code(path)
    return pd.read_hdf(path, key=key) if key else pd.read_hdf(path)


def write_hdf(frame: pd.DataFrame, path: str | Path, key: str = "df_with_missing",
              format: str = "table") -> Path:
    """Write a DataFrame that pandas 2 and 3 both read.

    ``format="table"`` is what DeepLabCut writes for pose outputs; ``"fixed"`` what it (and
    napari-deeplabcut) write for ``CollectedData`` labels, whose rows are a three-level index.
    """
    import tables

    path = Path(path)
    frame.to_hdf(path, key=key, mode="w", format=format)
    if format != "table":
        return path
    with tables.open_file(path, mode="a") as f:
        group = f.get_node("/" + key)
        if "pandas_version" not in group._v_attrs._f_list("user"):
            group._v_attrs.pandas_version = PANDAS_HDF_VERSION
    return path
