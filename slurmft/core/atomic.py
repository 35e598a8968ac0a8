"""One way to write a file that a reader never sees half-written.

``atomic_write`` writes a temporary file in the target's folder, fsyncs it, renames it over
the target and fsyncs the folder: the target is either the old file or the complete new one,
and a refused or failed write leaves nothing behind. A target that exists and is not a regular
file (``/dev/stdout``, ``/dev/full``, a FIFO) is written in place: a rename would replace the
device node.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically (``mode``: permission bits, e.g. 0o755).
    Raises OSError (ENOENT for a missing folder, EACCES, ENOSPC...) with nothing left over."""
    target = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(target))
        with open(target, "wb") as fh:          # a device or a pipe: no rename over it
            fh.write(blob)
            fh.flush()
        return target
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_all(folder: str | os.PathLike, files: Mapping[str, str | bytes]) -> list[Path]:
    """Write several files into ``folder``: every temporary file is complete before the
    first rename, so a full disk or a refused write leaves none of them behind."""
    root = Path(folder)
    temps: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
            temps.append((tmp, root / name))
            blob = data.encode() if isinstance(data, str) else data
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        for tmp, target in temps:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    _fsync_dir(root)
    return [target for _, target in temps]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
