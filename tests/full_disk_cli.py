"""Run the negalign CLI on a disk that fills up: `python full_disk_cli.py PATTERN LIMIT ARGS...`.

Every file that negalign.base.durable opens for writing under a path containing PATTERN takes
LIMIT bytes, then each further write fails with ENOSPC, as on a full disk (the bytes before it are
written). Everything else runs unchanged; the exit code is the CLI's.
"""

from __future__ import annotations

import builtins
import errno
import os
import sys


class FillingFile:
    """A binary file whose writes fail with ENOSPC once `limit` bytes are in it."""

    def __init__(self, f, limit: int):
        self._f, self._room = f, limit

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._room:
            self._f.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):  # flush, fileno, close, ...
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def main() -> int:
    pattern, limit, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    import negalign.base.durable as durable

    def filling_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        return FillingFile(f, limit) if pattern in str(path) and "w" in mode else f

    durable.open = filling_open  # the module's own name `open`, as a test's monkeypatch would set it
    from negalign.cli.main import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
