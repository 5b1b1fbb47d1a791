"""Crash-safe file writing: every output is written to a temporary file and renamed into place."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from negalign.base.errors import UserError


# Errors about the disk, not the program: the user frees space or fixes permissions and reruns.
_DISK_ERRNOS = {errno.ENOSPC: "disk full while writing", errno.EDQUOT: "disk quota exceeded while writing",
                errno.EROFS: "cannot write", errno.EACCES: "cannot write"}


def disk_error(e: OSError, path: str | os.PathLike,
               remedy: str = "fix that and rerun the same command to resume") -> UserError | None:
    """A one-line UserError for a disk-level write failure (full, quota, read-only), else None."""
    what = _DISK_ERRNOS.get(e.errno)
    if what is None:
        return None
    return UserError(f"{what}: {e.strerror}; {remedy}", path=str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically."""
    path = Path(path)
    tmp = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            err = disk_error(e, path)
            if err is None:
                raise
            raise err from None
        fsync_dir(path.parent)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (not every file system can: then a no-op)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


class JsonlAppender:
    """Append-only JSONL log for resumable stages.

    Each row is written whole and flushed + fsynced, so a kill leaves at most one torn last
    line; `read_jsonl_tolerant` drops that line on resume and the stage redoes it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        try:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            err = disk_error(e, self.path)
            if err is None:
                raise
            raise err from None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_torn_tail(path: Path) -> None:
    """Cut a partial last line (no trailing newline) left by a kill mid-write."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file we wrote ourselves, ignoring a torn last line from an interrupted run."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn tail: the stage will redo it
                break
            raise UserError("corrupt line in a run file; delete the file to redo the stage",
                            path=str(path), line=i + 1)
    return rows


def check_writable_dir(path: str | os.PathLike, *, min_free_bytes: int = 50 * 2**20) -> Path:
    """Fail early, with one line, if a run directory cannot be written or its disk is full."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run directory: {e.strerror}", path=str(path)) from None
    probe = path / ".negalign-write-probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"run directory is not writable: {e.strerror}", path=str(path)) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < min_free_bytes:
        raise UserError(f"only {free // 2**20} MiB free on the run directory's disk "
                        f"(need at least {min_free_bytes // 2**20} MiB)", path=str(path))
    return path
