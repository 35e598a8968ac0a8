"""One way to write a file that a reader never sees half-written (the ONE implementation).

``atomic_write`` writes a temporary file in the target's folder, fsyncs it, renames it over
the target and fsyncs the folder: the target is either the old file or the complete new one,
and a refused or failed write leaves nothing behind. A target that exists and is not a regular
file (``/dev/stdout``, ``/dev/full``, a FIFO) is written in place: a rename would replace the
device node. ``fsync_dir`` makes a rename or a create inside a folder durable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

#: errno values meaning "this filesystem cannot fsync a directory": nothing to do then.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (after a create or rename inside it) to disk.

    Raises OSError (EIO, ENOENT...) unless the filesystem does not support syncing folders."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None,
                 fsync: bool = True, tmp_prefix: str | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically and return it as a Path.

    ``mode``: permission bits (e.g. 0o755); None keeps an existing file's bits, or gives a
    new file 0o666 minus the umask (0o644 under the usual umask). ``fsync``: flush the file
    and its folder before returning (False only for scratch files that may be lost).
    ``tmp_prefix``: name the temporary file ``<tmp_prefix><name>.<random>.tmp`` so a caller's
    own cleanup recognises crash leftovers (default ``.<name>.<random>.tmp``).
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
    prefix = f"{tmp_prefix}{target.name}." if tmp_prefix is not None else f".{target.name}."
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".tmp")
    except OSError as exc:     # name the file the caller asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(target)) from None
    try:
        _write_fd(fd, blob, fsync)
        if mode is None and st is not None:
            mode = stat.S_IMODE(st.st_mode)
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)
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
            _write_fd(fd, data.encode() if isinstance(data, str) else data, True)
            os.chmod(tmp, _default_mode())
        for tmp, target in temps:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    fsync_dir(root)
    return [target for _, target in temps]


def _write_fd(fd: int, blob: bytes, fsync: bool) -> None:
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def _default_mode() -> int:
    """0o666 minus the process umask: what open() would give a new file.

    The umask is read from /proc/self/status (Linux 4.7+) and not with os.umask(), which can
    only read it by setting it: for that moment a file another thread creates (the training,
    while a checkpoint is written in the background) would get wide-open permissions. The
    os.umask() pair is the fallback where /proc does not say."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)       # the safe value for the moment it is set
    os.umask(umask)
    return umask
