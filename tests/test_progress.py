"""Progress with ETA (negalign.base.progress): plain throttled lines in a log, a bar on a terminal,
the switch and rank 0; then the sample and reference stages end to end on a tiny model."""

from __future__ import annotations

import io
import re

import pytest

from negalign.base.progress import Progress, clock, mode
from negalign.config import config_from_dict
from negalign.data.loaders import save_examples
from negalign.data.records import Example

LINE = re.compile(r"^(?P<label>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)  "
                  r"\[(?P<elapsed>[\d:]+) elapsed, ETA (?P<eta>[\d:?]+), (?P<rates>.+)\]$")


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    for name in ("NEGALIGN_PROGRESS", "RANK"):
        monkeypatch.delenv(name, raising=False)


def _lines(total: int, steps: list[tuple[float, int]], **kw) -> list[str]:
    """Lines written for updates of (seconds later, units) on a non-terminal stream."""
    t, lines = FakeClock(), []
    with Progress("sample", total, unit="prompts", log=lines.append, clock_fn=t, **kw) as p:
        for dt, n in steps:
            t.t += dt
            p.update(n, tokens=10 * n)
    return lines


def test_a_line_has_done_total_elapsed_eta_and_rates():
    lines = _lines(40, [(4.0, 4)])
    m = LINE.match(lines[0])
    assert m, lines
    assert (m["label"], m["done"], m["total"], m["unit"]) == ("sample", "4", "40", "prompts")
    assert m["elapsed"] == "0:04" and m["eta"] == "0:36"  # 36 prompts left at 1 prompt/s
    assert m["rates"] == "10.0 tokens/s, 1.00 prompts/s"
    assert clock(3725) == "1:02:05" and clock(59.6) == "1:00"


def test_many_quick_updates_give_few_lines_and_always_a_final_one():
    lines = _lines(1000, [(0.001, 1)] * 1000)
    assert len(lines) <= 11  # one per 10 % crossed, the last being the final line
    assert lines[-1].startswith("sample: 1000/1000 prompts") and "ETA 0:00" in lines[-1]
    # slow updates: a line every `every_s` seconds even within one 10 % band
    slow = _lines(10_000, [(4.0, 1)] * 20, every_s=30.0)
    assert 2 <= len(slow) <= 4
    # stopped early (a kill, an error): close still writes where it got to
    stopped = _lines(100, [(0.1, 1), (0.1, 1), (0.1, 1)])
    assert stopped[-1].startswith("sample: 3/100 prompts")


def test_a_resumed_stage_counts_done_units_but_times_only_new_ones():
    t, lines = FakeClock(), []
    with Progress("train", 100, done=50, unit="steps", log=lines.append, clock_fn=t) as p:
        t.t += 10.0
        p.update(10, loss=0.51234)
    m = LINE.match(lines[0])
    assert (m["done"], m["total"]) == ("60", "100")
    assert m["eta"] == "0:40" and m["rates"] == "1.00 steps/s, loss 0.5123"  # 40 steps at 1 step/s


def test_a_terminal_gets_a_bar_not_lines():
    stream, lines = Terminal(), []
    with Progress("generate", 8, unit="seq", log=lines.append, stream=stream) as p:
        for _ in range(8):
            p.update(1, tokens=16)
    assert lines == []
    out = stream.getvalue()
    assert "generate" in out and "8/8" in out and "|" in out and "tok/s" in out  # tqdm's bar and rate


def test_a_stage_line_written_through_the_writer_is_whole_above_the_bar():
    stream = Terminal()
    with Progress("train", 4, unit="steps", stream=stream) as p:
        log = p.writer(lambda line: stream.write(line + "\n"))
        p.update(1)
        log("step    1/4  loss 0.6931")
        p.update(3)
    log("train: saved model")  # after the bar closed: written as is
    out = stream.getvalue()
    assert re.search(r"\r +\rstep    1/4  loss 0\.6931\n", out), out  # the bar cleared first, then the line
    assert out.endswith("train: saved model\n")


def test_the_switch_and_other_ranks_turn_it_off(monkeypatch):
    assert mode(io.StringIO()) == "lines" and mode(Terminal()) == "bar"
    monkeypatch.setenv("NEGALIGN_PROGRESS", "lines")
    assert mode(Terminal()) == "lines"
    monkeypatch.setenv("NEGALIGN_PROGRESS", "0")
    assert _lines(10, [(1.0, 10)]) == [] and mode(Terminal()) == "off"
    monkeypatch.delenv("NEGALIGN_PROGRESS")
    monkeypatch.setenv("RANK", "1")
    assert _lines(10, [(1.0, 10)]) == []
    monkeypatch.setenv("RANK", "0")
    assert len(_lines(10, [(1.0, 10)])) == 1


# ---------------------------------------------------------------- stages end to end

@pytest.fixture
def cfg(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    save_examples(data, [Example(id=f"e{i}", prompt=[{"role": "user", "content": f"Question {i}?"}],
                                 negatives=[f"Bad answer {i}."]) for i in range(4)])
    return config_from_dict({
        "run_dir": str(tmp_path / "run"), "model": {"name": str(tiny_model_dir)},
        "data": {"source": str(data), "max_response_tokens": 16},
        "sample": {"k": 1, "max_new_tokens": 4, "prompts_per_write": 1},
        "reference": {"precision": "fp32"},
    })


def test_sample_and_reference_stages_print_progress_with_eta(cfg, capsys):
    from negalign.recipes import d2o

    d2o.stage_sample(cfg)  # what `negalign sample` runs, printing to stdout
    out = capsys.readouterr().out.splitlines()
    progress = [m for m in map(LINE.match, out) if m and m["label"] == "sample"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == "4", out
    assert "tokens/s" in progress[-1]["rates"] and "prompts/s" in progress[-1]["rates"]
    assert any(line.startswith("sample: 4 prompts to do (0 already done)") for line in out)

    d2o.stage_reference(cfg)
    out = capsys.readouterr().out.splitlines()
    progress = [m for m in map(LINE.match, out) if m and m["label"] == "reference"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == "4" and progress[-1]["unit"] == "groups", out
    assert "tokens/s" in progress[-1]["rates"]
