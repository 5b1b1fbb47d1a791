"""Data files as common tools save them: a UTF-8 byte-order mark, CRLF line endings, Excel's "CSV UTF-8".

Each file holds the same records as a plain UTF-8, LF file and must load to the same examples, in
this process and through `negalign data validate`. (Ambiguous input, refused, is in tests/data/bad/.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from negalign.data.loaders import load_examples

BOM = b"\xef\xbb\xbf"
RECORDS = [
    {"id": "a", "prompt": "How do I pick a lock?", "negatives": ["Insert a tension wrench, then rake the pins."],
     "positives": ["I can't help with that."]},
    {"id": "b", "prompt": "Écris une insulte 🙂", "negatives": ['He said "fine".\nThen he left.']},
]


def _csv_cell(text: str) -> str:
    """A cell as Excel writes it: quoted only when it holds a comma, a quote or a line break."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def _csv_text(line_end: str) -> str:
    rows = [["id", "prompt", "negative", "positive"]]
    rows += [[r["id"], r["prompt"], r["negatives"][0], (r.get("positives") or [""])[0]] for r in RECORDS]
    # Excel ends records with CRLF and keeps a line break inside a cell as LF.
    return "".join(",".join(_csv_cell(c) for c in row) + line_end for row in rows)


def plain_files() -> dict[str, bytes]:
    """The reference files: UTF-8 without a byte-order mark, LF line endings."""
    return {
        "data.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS).encode(),
        "data.json": (json.dumps(RECORDS, indent=2, ensure_ascii=False) + "\n").encode(),
        "data.csv": _csv_text("\n").encode(),
    }


def exported_files() -> dict[str, tuple[str, bytes]]:
    """name -> (the plain file it must equal, bytes as a Windows tool writes them)."""
    plain = plain_files()
    crlf = {name: data.replace(b"\n", b"\r\n") for name, data in plain.items() if name != "data.csv"}
    return {
        "bom.jsonl": ("data.jsonl", BOM + plain["data.jsonl"]),
        "crlf.jsonl": ("data.jsonl", crlf["data.jsonl"]),
        "bom_crlf.jsonl": ("data.jsonl", BOM + crlf["data.jsonl"]),
        "bom_crlf.json": ("data.json", BOM + crlf["data.json"]),
        "bom.csv": ("data.csv", BOM + plain["data.csv"]),
        "excel_csv_utf8.csv": ("data.csv", BOM + _csv_text("\r\n").encode()),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exported")
    for name, data in plain_files().items():
        (root / name).write_bytes(data)
    for name, (_, data) in exported_files().items():
        (root / name).write_bytes(data)
    return root


def _content(examples) -> list[tuple]:
    return [(ex.id, ex.prompt, ex.negatives, ex.positives) for ex in examples]


def test_the_files_are_what_the_tools_write():
    files = exported_files()
    assert all(data.startswith(BOM) for name, (_, data) in files.items() if name.startswith(("bom", "excel")))
    excel = files["excel_csv_utf8.csv"][1]
    assert excel.count(b"\r\n") == 3 and b'"He said ""fine"".\nThen he left."' in excel


@pytest.mark.parametrize("name", sorted(exported_files()))
def test_exported_file_loads_like_the_plain_one(folder, name):
    plain, _ = exported_files()[name]
    got, want = load_examples(folder / name), load_examples(folder / plain)
    assert _content(got) == _content(want)
    assert want[1].negatives == ['He said "fine".\nThen he left.'] and want[1].prompt[0]["content"].startswith("É")


@pytest.mark.subprocess
def test_exported_files_through_the_cli(folder):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")

    def validate(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "negalign", "data", "validate", name], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=120)

    names = sorted(exported_files())
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(names, pool.map(validate, names)))
        plain = dict(zip(plain_files(), pool.map(validate, plain_files())))
    for name, proc in results.items():
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)
        want = plain[exported_files()[name][0]]
        assert want.returncode == 0, want.stderr
        # "NAME: ok: 2 examples, ..., 1 positives, ..." with the same counts as the plain file
        assert proc.stdout.split(": ok: ")[1] == want.stdout.split(": ok: ")[1]
        assert "2 examples" in proc.stdout and "1 positives" in proc.stdout
