"""Folders that survive a power loss, not only a kill: training checkpoints and final models.

A kill cannot hurt a folder that is written under a temporary name and renamed into place. A power
loss can: the rename may reach the disk before the files' data, leaving a folder that looks
complete and is not. So every file is fsynced before the rename and the parent directory after
it, and a manifest (size and sha256 of every file) lets a later run tell a damaged folder from a
good one before using it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterator

from negalign.base.io import fsync_dir

MANIFEST = "manifest.json"
_BLOCK = 1 << 20


def _digest(path: Path, *, sync: bool = False) -> dict:
    """Size and sha256 of a file, read back from the disk; `sync`: fsync it too."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
            size += len(block)
        if sync:
            os.fsync(f.fileno())
    return {"size": size, "sha256": h.hexdigest()}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Make the folder `tmp` durable and rename it to `final` (replacing an older one).

    Every file is fsynced and listed with its size and sha256 in manifest.json, every directory is
    fsynced, then the rename, then the parent directory (so the rename itself is on disk).
    """
    files = {p.relative_to(tmp).as_posix(): _digest(p, sync=True) for p in _files(tmp)}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [tmp]:
        fsync_dir(d)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return final


def replace_published_file(folder: Path, name: str, data: bytes) -> Path:
    """Replace (or add) one file of a published folder durably and keep its manifest true.

    The file and the manifest are each written under a temporary name, fsynced and renamed; a kill
    between the two renames leaves a manifest that names the old file, which manifest_problem reports."""
    folder = Path(folder)
    target = folder / name
    _write_durably(target, data)
    manifest = folder / MANIFEST
    if manifest.exists():
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        doc.setdefault("files", {})[name] = _digest(target)
        _write_durably(manifest, json.dumps(doc, indent=1).encode("utf-8"))
    return target


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def manifest_problem(folder: Path) -> str | None:
    """What is wrong with `folder` against its manifest, or None if nothing is.

    A folder without a manifest (written before manifests existed) cannot be checked and passes.
    Sizes are compared first: cheap, and what a cut-short write shows.
    """
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        wanted = {name: (int(v["size"]), str(v["sha256"])) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"
    for name, (size, _) in wanted.items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        if (folder / name).stat().st_size != size:
            return f"{name} has {(folder / name).stat().st_size} bytes, the manifest says {size}"
    for name, (_, sha) in wanted.items():
        if _digest(folder / name)["sha256"] != sha:
            return f"{name} does not match its sha256 in the manifest"
    return None


class _KeepsOSError:
    """A binary file that remembers the OSError its write raised (see `open_for_writing`)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise


@contextlib.contextmanager
def open_for_writing(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write, for writers that report a failed write their own way.

    torch.save turns the OSError of a file's write into a RuntimeError without errno; the OSError
    is raised instead, so that a full disk is reported as a full disk.
    """
    with open(path, "wb") as f:
        keeper = _KeepsOSError(f)
        try:
            yield keeper
            f.flush()
        except Exception:
            if keeper.error is not None:
                raise keeper.error from None
            raise
