"""Figures quoted in the benchmark READMEs equal the JSON results they come from.

A README says where a figure comes from in an HTML comment, which renders as nothing:

- right after the number:  `**8.2x** <!-- figure: ../throughput/results/cpu-quiet.json#/sampling/speedup -->`.
  With several sources, the comment checks as many numbers before it, in order:
  `17/24 <!-- figure: results.json#/pair_stats/revision_better results.json#/pair_stats/kept -->`.
- before a table, one source per checked column:

      <!-- figures: results.json#/results/{model}
      refusal, plain = refusal_plain
      P(harm), plain = harm_plain
      -->

  `{model}` is the row's cell in the column headed "model" (`{#}`: the row's index, from 0, for a
  JSON list in the table's order); each column's pointers (relative to the row's) check the first
  numbers of its cells, in order. Cells without a number (n/a, -) are skipped.

The source is a JSON file relative to the README, then `#` and a JSON pointer (RFC 6901; %20 for a
space). A number printed with d decimals must be the JSON value to d decimals (within half a unit of
its last digit); a number followed by % is compared with 100 times the value.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = sorted(ROOT.glob("benchmarks/*/README.md"))

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s?%)?")
INLINE = re.compile(r"<!--\s*figure:\s*(.*?)\s*-->")
TABLE = re.compile(r"<!--\s*figures:\s*(\S+)\s*\n(.*?)-->\s*\n", re.S)


def _numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def _resolve(readme: Path, source: str, cache: dict):
    """The value at FILE#/POINTER; KeyError naming what is missing."""
    file, _, pointer = source.partition("#")
    path = (readme.parent / file).resolve()
    if path not in cache:
        cache[path] = json.loads(path.read_text(encoding="utf-8"))
    value = cache[path]
    for part in unquote(pointer).split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(f"{file}: no {pointer!r}") from None
    return value


def _mismatch(printed: str, value) -> str | None:
    """Why `printed` does not show `value`, or None when it does."""
    percent = printed.endswith("%")
    digits = printed.rstrip("%").strip().replace(",", "")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{printed!r} but the JSON holds {value!r}"
    shown = float(digits)
    actual = value * 100 if percent else value
    decimals = len(digits.partition(".")[2])
    if abs(actual - shown) > 0.5 * 10 ** -decimals + 1e-9:
        return f"{printed!r} but the JSON holds {value!r}"
    return None


def _check_inline(readme: Path, text: str, cache: dict) -> tuple[int, list[str]]:
    checked, errors = 0, []
    for lineno, line in enumerate(text.splitlines(), 1):
        start = 0
        for m in INLINE.finditer(line):
            sources = m.group(1).split()
            before = _numbers(line[start:m.start()])
            start = m.end()
            if len(before) < len(sources):
                errors.append(f"{readme.name}:{lineno}: {len(sources)} sources but {len(before)} numbers before them")
                continue
            for printed, source in zip(before[-len(sources):], sources):
                errors += _compare(readme, lineno, printed, source, cache)
                checked += 1
    return checked, errors


def _compare(readme: Path, lineno: int, printed: str, source: str, cache: dict) -> list[str]:
    try:
        why = _mismatch(printed, _resolve(readme, source, cache))
    except KeyError as e:
        return [f"{readme.name}:{lineno}: {e.args[0]}"]
    except (OSError, json.JSONDecodeError) as e:
        return [f"{readme.name}:{lineno}: {source}: {e}"]
    return [] if why is None else [f"{readme.name}:{lineno}: {source}: {why}"]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _check_tables(readme: Path, text: str, cache: dict) -> tuple[int, list[str]]:
    checked, errors = 0, []
    for m in TABLE.finditer(text):
        row_source = m.group(1)
        columns = {}
        for spec in m.group(2).strip().splitlines():
            header, _, pointers = spec.partition("=")
            columns[header.strip()] = pointers.split()
        first = text.count("\n", 0, m.end()) + 1
        lines = text.splitlines()[first - 1:]
        table = _leading_table(lines)
        if len(table) < 3:
            errors.append(f"{readme.name}:{first}: no table after the figures comment")
            continue
        headers = _cells(table[0])
        missing = sorted(set(columns) - set(headers))
        if missing:
            errors.append(f"{readme.name}:{first}: no column {missing[0]!r} in the table")
            continue
        for offset, row in enumerate(table[2:], 2):
            lineno = first + offset
            cells = {**dict(zip(headers, _cells(row))), "#": str(offset - 2)}
            base = re.sub(r"\{([^}]+)\}", lambda k: cells.get(k.group(1), "").strip("`*")
                          .replace("~", "~0").replace("/", "~1"), row_source)
            try:
                _resolve(readme, base, cache)
            except KeyError as e:
                errors.append(f"{readme.name}:{lineno}: row {row.split('|')[1].strip()!r}: {e.args[0]}")
                continue
            for header, pointers in columns.items():
                numbers = _numbers(cells.get(header, ""))
                if not numbers:
                    continue
                if len(numbers) < len(pointers):
                    errors.append(f"{readme.name}:{lineno}: column {header!r}: {len(pointers)} sources but "
                                  f"{len(numbers)} numbers")
                    continue
                for printed, pointer in zip(numbers, pointers):
                    errors += _compare(readme, lineno, printed, f"{base}/{pointer}", cache)
                    checked += 1
    return checked, errors


def _leading_table(lines: list[str]) -> list[str]:
    """The markdown table that starts at the first line beginning with '|' (blank lines before it allowed)."""
    out = []
    for line in lines:
        if line.startswith("|"):
            out.append(line)
        elif out or line.strip():
            break
    return out


def check_figures(readme: Path) -> tuple[int, list[str]]:
    """(figures checked, one line per figure that does not match its source)."""
    text = readme.read_text(encoding="utf-8")
    cache: dict = {}
    n_inline, inline_errors = _check_inline(readme, text, cache)
    n_table, table_errors = _check_tables(readme, text, cache)
    return n_inline + n_table, inline_errors + table_errors


@pytest.mark.parametrize("readme", READMES, ids=[p.parent.name for p in READMES])
def test_benchmark_figures_match_their_json(readme):
    checked, errors = check_figures(readme)
    assert not errors, "\n".join(errors)
    assert checked >= 5, f"{readme}: only {checked} figures are tied to a result file"


def test_the_check_catches_a_wrong_figure(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"a": {"x": 0.0625, "n": 1024, "name with space": 8.24},
                                                 "rows": {"m1": {"p": 0.4242, "ci": [0.1, 0.9]}},
                                                 "list": [{"p": 1.5}, {"p": 2.5}]}))
    good = ("rate 6.2% <!-- figure: r.json#/a/x --> of 1,024 <!-- figure: r.json#/a/n --> and "
            "8.2x <!-- figure: r.json#/a/name%20with%20space -->\n\n"
            "<!-- figures: r.json#/rows/{model}\nP = p ci/0 ci/1\n-->\n"
            "| model | P |\n|---|---|\n| m1 | 0.424 [0.10, 0.90] |\n\n"
            "<!-- figures: r.json#/list/{#}\nP = p\n-->\n"
            "| model | P |\n|---|---|\n| first | 1.5 |\n| second | 2.5 |\n")
    readme = tmp_path / "README.md"
    readme.write_text(good)
    assert check_figures(readme) == (8, [])
    for wrong, expect in (("6.2%", "6.4%"), ("0.424 [", "0.425 ["), ("0.90]", "0.95]"), ("#/a/n -->", "#/a/nope -->"),
                          ("| m1 |", "| m2 |"), ("| 2.5 |", "| 1.5 |")):
        readme.write_text(good.replace(wrong, expect))
        checked, errors = check_figures(readme)
        assert len(errors) == 1, (expect, errors)
