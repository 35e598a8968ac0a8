"""core.atomic: the one atomic write (temp file, fsync, rename, fsync folder)."""

import os
import stat

import pytest

from slurmft.core import atomic
from slurmft.core.atomic import atomic_write, atomic_write_all, fsync_dir


def test_writes_bytes_and_text(tmp_path):
    atomic_write(tmp_path / "a", b"\x00bytes")
    atomic_write(tmp_path / "b", "text")
    assert (tmp_path / "a").read_bytes() == b"\x00bytes"
    assert (tmp_path / "b").read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_mode_is_set_and_kept_on_replace(tmp_path):
    target = tmp_path / "run.sh"
    atomic_write(target, "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    atomic_write(target, "#!/bin/sh\necho\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_failed_rename_keeps_old_content_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_fsync_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic_write(tmp_path / "f", "x")
    assert len(synced) == 2                     # the file, then its folder
    synced.clear()
    atomic_write(tmp_path / "g", "x", fsync=False)
    assert synced == []


def test_tmp_prefix_names_the_temporary_file(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (seen.append(os.path.basename(s)), real(s, d)))
    atomic_write(tmp_path / "latest", "1", tmp_prefix=".tmp-")
    assert seen[0].startswith(".tmp-latest.") and seen[0].endswith(".tmp")


def test_missing_folder_raises_enoent(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "f", "x")


def test_directory_target_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, "x")


def test_write_all_is_all_or_nothing(tmp_path, monkeypatch):
    calls = []
    real = os.replace

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(5, "I/O error")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", second_fails)
    with pytest.raises(OSError):
        atomic_write_all(tmp_path, {"a": "1", "b": "2"})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(atomic.os, "replace", real)
    written = atomic_write_all(tmp_path, {"a": "1", "b": b"2"})
    assert [p.read_text() for p in written] == ["1", "2"]


def test_fsync_dir_raises_for_missing_folder(tmp_path):
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_default_mode_reads_the_umask_without_changing_it(monkeypatch, tmp_path):
    """Reading the umask must not set it (a background checkpoint write would otherwise open
    a window in which files other threads create get mode 0o666)."""
    import os

    from slurmft.core import atomic

    def no_umask(_mask):
        raise AssertionError("os.umask called: it changes the umask of every thread")

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(atomic.os, "umask", no_umask)
        assert atomic._default_mode() == 0o640
        path = atomic.atomic_write(tmp_path / "f", b"x")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_a_missing_folder_is_reported_under_the_target_name(tmp_path):
    import pytest

    from slurmft.core.atomic import atomic_write

    with pytest.raises(FileNotFoundError) as err:
        atomic_write(tmp_path / "no" / "hostfile", b"x")
    assert err.value.filename == str(tmp_path / "no" / "hostfile")
