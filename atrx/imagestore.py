"""The image store: ``images.zarr/{center}/{patient}/{study}/v{version}/{array}``.

A version group is written with ``complete = False``, filled, and only then marked complete with
the hash of its content; readers refuse an incomplete group. A new version never touches an old
one, so features computed from version 1 stay reproducible after version 2 arrives.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import zarr

from atrx.errors import ConflictError

CHUNKS = (64, 64, 64)
STORE_LAYOUT_VERSION = 1


class IncompleteVersionError(ConflictError):
    """A version group exists but was never marked complete (an interrupted write)."""


def version_path(center: str, patient_id: str, study_id: str, version: int) -> str:
    return f"{center}/{patient_id}/{study_id}/v{version}"


def arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    """Hash of names, dtypes, shapes and bytes: what a reader gets back from the group."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_version(root: str, path: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> str:
    """Write one study version atomically (in the write-then-mark sense); returns its content hash."""
    group = zarr.open_group(store=root, path=path, mode="w")
    group.attrs.update({**attrs, "complete": False, "layout_version": STORE_LAYOUT_VERSION})
    for name, data in arrays.items():
        chunks = tuple(min(c, s) for c, s in zip(CHUNKS, data.shape, strict=True))
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
        arr[...] = data
    digest = arrays_hash(arrays)
    group.attrs.update({"complete": True, "content_hash": digest})
    return digest


def read_attrs(root: str, path: str) -> dict[str, Any] | None:
    """Attributes of a version group, or None when it does not exist."""
    try:
        group = zarr.open_group(store=root, path=path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    return group.attrs.asdict()


def open_version(root: str, path: str) -> zarr.Group:
    """Open a complete version group for reading; an incomplete one is an error naming the path."""
    group = zarr.open_group(store=root, path=path, mode="r")
    if not group.attrs.get("complete"):
        raise IncompleteVersionError(
            f"{root}/{path} was never marked complete (an interrupted ingest); re-run `atrx ingest`"
        )
    return group


def read_version(root: str, path: str, names: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (all, or ``names``) and attributes of a complete version."""
    group = open_version(root, path)
    keys = names if names is not None else sorted(group.array_keys())
    return {k: group[k][...] for k in keys}, group.attrs.asdict()
