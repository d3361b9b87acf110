"""Atomic writes: a reader sees the old file or the new one, never half of either.

On a local disk the bytes go to a hidden temporary sibling that is synced
and renamed over the final name (``os.replace`` is atomic within a
directory). An object store shows an object only once its upload is
complete (a PUT, or the completion of a multipart upload). The
temporary's name, ``.{name}.tmp-{hex}``, ends in neither ``.fits`` nor
``.parquet``, so globs over a store never see one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from upath import UPath

__all__ = ["atomic_write_bytes", "local_path", "remove_stale_temporaries"]

LOCAL_PROTOCOLS = ("", "file", "local")


def local_path(path: UPath | Path) -> Path | None:
    """``path`` as a :class:`pathlib.Path` when it is on the local disk, else None."""
    protocol = getattr(path, "protocol", "")
    if protocol not in LOCAL_PROTOCOLS:
        return None
    return Path(path.path if isinstance(path, UPath) else path)


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def remove_stale_temporaries(path: UPath | Path) -> list[Path]:
    """Delete temporaries that a killed earlier write of ``path`` left beside it.

    Returns the paths removed; nothing happens for a remote path.
    """
    target = local_path(path)
    if target is None or not target.parent.is_dir():
        return []
    removed = []
    for stale in target.parent.glob(f"{_temporary_prefix(target)}*"):
        stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def atomic_write_bytes(path: UPath | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file.

    Parameters
    ----------
    path : upath.UPath or pathlib.Path
        Destination; a local path's folder is created when missing.
    data : bytes
        The complete file.
    """
    target = local_path(path)
    if target is None:
        path.write_bytes(data)  # the object appears whole or not at all
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    temporary = target.with_name(f"{_temporary_prefix(target)}{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
