"""SIGKILL fault injection for any negalign command (test_faults.py).

`run_with_kills` starts a command, kills it a few times while it works, then lets a last run finish.
A stage plugs in with its command line and a probe of its durable progress (lines of its append-only
output, shards on disk, ...): each kill waits until the stage has made some new durable progress,
then a random moment more, so kills land while the stage is working. To point it at another command
(`negalign evaluate`, say): its argv, a probe such as `lambda: lines(run_dir / "eval" / "x.jsonl")`,
and the number of units a whole run makes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def negalign(*args: str) -> list[str]:
    """The real CLI, in a child process of this interpreter."""
    return [sys.executable, "-m", "negalign", *args]


def lines(path: Path) -> int:
    """Complete lines of an append-only file: its durable progress."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def flags(overrides: dict[str, str]) -> list[str]:
    """`--section.key VALUE` for each override (run_dir as --run-dir)."""
    out: list[str] = []
    for key, value in overrides.items():
        out += ["--run-dir" if key == "run_dir" else f"--{key}", value]
    return out


def run_with_kills(argv: list[str], progress: Callable[[], int], kills: int, total: int, rng: random.Random,
                   log_path: Path, *, max_delay: float = 0.03) -> list[int]:
    """Run `argv`, SIGKILL it `kills` times mid-work, then let a last run finish (exit code 0 asserted).

    progress(): durable units done so far; total: units in a whole run. Returns the progress at
    each kill; a command that finishes before taking all its kills fails the test.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    points: list[int] = []
    for _ in range(kills + 5):
        with open(log_path, "a") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        if len(points) < kills:
            start = progress()
            # Usually one unit of new durable progress, sometimes two; with none left to wait for
            # (the last unit), the kill lands at a random moment of the start-up instead: within
            # 1.5 s, while python is still importing torch and transformers (several seconds here,
            # over 2 s on any machine measured), so the process cannot finish before it.
            target = start + 1 + (rng.random() < 0.3)
            fallback = time.monotonic() + rng.uniform(0.3, 1.5) if target > total - 1 else None
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if fallback is None and progress() >= target:
                    break
                if fallback is not None and time.monotonic() > fallback:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, max_delay))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                points.append(progress())
                continue
        rc = proc.wait(timeout=300)
        assert rc == 0, log_path.read_text()[-3000:]
        assert len(points) == kills, f"{argv[3:4]}: finished after {len(points)} of its {kills} kills; see {log_path}"
        return points
    raise AssertionError(f"{argv[3:4]}: did not finish; see {log_path}")
