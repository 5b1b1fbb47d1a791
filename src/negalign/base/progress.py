"""Progress of a long stage, with ETA and rate: a bar on a terminal, plain periodic lines in a log.

One `Progress` per loop over known work (prompts, groups, steps, replies). When its stream (stderr)
is a terminal it draws a tqdm bar: count/total, ETA, rate, and the postfix (tokens/s, loss). When
it is not (CI logs, pipes, pytest) it writes plain lines instead, few enough to keep a log readable:
one when the count crosses a 10 % mark or `every_s` seconds after the last line, plus the final one:

    sample: 12/40 prompts  [0:42 elapsed, ETA 1:38, 35.2 tokens/s, 0.29 prompts/s]

Units already done before this run (a resumed stage) count as done, but the rate and ETA come from
the new work only. NEGALIGN_PROGRESS=0 turns progress off (the stages' other lines stay);
NEGALIGN_PROGRESS=lines writes plain lines even on a terminal. Under a multi-process launch only
rank 0 shows progress.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

ENV = "NEGALIGN_PROGRESS"
OFF = ("0", "off", "false", "no")


def mode(stream) -> str:
    """'off', 'bar' or 'lines': the switch, then this process's rank, then whether `stream` is a terminal."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in OFF or int(os.environ.get("RANK", 0) or 0) != 0:  # the launchers' RANK (base.distributed)
        return "off"
    if setting == "lines":
        return "lines"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def clock(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    s = int(max(seconds, 0) + 0.5)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Counts units of one stage's work and shows it (see the module docstring).

    total: units in the whole stage; done: units already done before this run (resume).
    log: where plain lines go (the stage's log), else `stream`. clock: for tests.
    """

    def __init__(self, label: str, total: int, *, done: int = 0, unit: str = "items",
                 log: Callable[[str], None] | None = None, stream=None, every_s: float = 30.0,
                 clock_fn: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.start_done = self.done = done
        self.stream = stream if stream is not None else sys.stderr
        self.log = log or (lambda line: print(line, file=self.stream, flush=True))
        self.every_s, self.clock = every_s, clock_fn
        self.tokens, self.postfix = 0, {}
        self.mode = mode(self.stream) if total > 0 else "off"
        self.t0 = self.last_line_t = clock_fn()
        self.printed_done = done
        self.bar = self._make_bar() if self.mode == "bar" else None

    def _make_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.done, desc=self.label, unit=self.unit, file=self.stream,
                    dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int = 1, *, tokens: int = 0, **postfix) -> None:
        """`n` more units done; `tokens` new tokens in them (rate in tokens/s); postfix: e.g. loss=0.53."""
        self.done += n
        self.tokens += tokens
        self.postfix.update(postfix)
        if self.mode == "bar":
            self.bar.set_postfix(self._postfix_items(), refresh=False)
            self.bar.update(n)
        elif self.mode == "lines" and self._line_due():
            self._line()

    def _line_due(self) -> bool:
        if self.done >= self.total:
            return True
        tenth = lambda k: k * 10 // self.total  # noqa: E731 - which 10 % band a count is in
        return tenth(self.done) > tenth(self.printed_done) or self.clock() - self.last_line_t >= self.every_s

    def _postfix_items(self) -> dict[str, str]:
        items = {}
        if self.tokens:
            items["tok/s"] = f"{self.tokens / max(self.clock() - self.t0, 1e-9):.1f}"
        items.update({k: _value(v) for k, v in self.postfix.items()})
        return items

    def line(self) -> str:
        """The plain line: done/total, elapsed, ETA (from this run's rate), rate(s), postfix."""
        elapsed = max(self.clock() - self.t0, 1e-9)
        new = self.done - self.start_done
        left = max(self.total - self.done, 0)
        eta = clock(left * elapsed / new) if new > 0 else ("0:00" if not left else "?")
        rates = [f"{self.tokens / elapsed:.1f} tokens/s"] if self.tokens else []
        rates.append(f"{new / elapsed:.2f} {self.unit}/s")
        extra = "".join(f", {k} {_value(v)}" for k, v in self.postfix.items())
        return (f"{self.label}: {self.done}/{self.total} {self.unit}  "
                f"[{clock(elapsed)} elapsed, ETA {eta}, {', '.join(rates)}{extra}]")

    def _line(self) -> None:
        self.log(self.line())
        self.printed_done, self.last_line_t = self.done, self.clock()

    def writer(self, log: Callable[..., None]) -> Callable[..., None]:
        """`log` that lifts the bar while it writes, so a stage's own lines stay whole on a terminal."""
        def write(*args, **kwargs) -> None:
            if self.bar is None:  # lines mode, or the bar is closed
                return log(*args, **kwargs)
            with self.bar.external_write_mode(file=self.stream):
                log(*args, **kwargs)
        return write

    def close(self) -> None:
        """End the bar, or write the final line if the last state was not written yet."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.done != self.printed_done:
            self._line()
        self.mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
