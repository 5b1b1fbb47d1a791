"""Load prompts with human negatives from files, Hugging Face datasets and presets; validate early.

Every problem in the user's data surfaces here, before any model loads, as one UserError line that
names the file, the line (JSONL/JSON/CSV) or row (parquet, datasets) and the field.

Native JSONL schema, one object per line:
    {"id"?: str, "prompt": str | [{"role", "content"}, ...], "negatives": [str] | "negative": str,
     "positives"?: [str] | "positive"?: str, "meta"?: {...}}
Other layouts are read through a `ColumnMapping` or a preset (see dataset_presets.py). Rows that share a
prompt are merged into one Example (responses concatenated, duplicates dropped).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from negalign.base.errors import UserError
from negalign.base.io import write_jsonl
from negalign.data.dataset_presets import PRESETS, RowProblem, RowRecord, check_prompt, check_response
from negalign.data.records import Example, prompt_key

FORMATS = ("jsonl", "json", "csv", "parquet", "hf-disk", "hub")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns hold what. Single-value columns (negative, positive) hold one response per row;
    list columns (negatives, positives) hold a list of responses. meta: columns copied into
    Example.meta (a column holding an object is merged into it)."""

    prompt: str = "prompt"
    negative: str | None = None
    negatives: str | None = None
    positive: str | None = None
    positives: str | None = None
    id: str | None = None
    meta: tuple[str, ...] = ()

    def columns(self) -> list[str]:
        return [c for c in (self.prompt, self.negative, self.negatives, self.positive,
                            self.positives, self.id) if c] + list(self.meta)


def native_mapping(columns: Iterable[str]) -> ColumnMapping:
    """The native schema's mapping, using whichever of its optional columns are present."""
    cols = set(columns)
    pick = lambda name: name if name in cols else None  # noqa: E731
    return ColumnMapping(prompt="prompt", negative=pick("negative"), negatives=pick("negatives"),
                         positive=pick("positive"), positives=pick("positives"), id=pick("id"),
                         meta=("meta",) if "meta" in cols else ())


# ---------------------------------------------------------------------------------------------
# Where a row came from, for error messages.

@dataclass(frozen=True)
class _Where:
    line: int | None = None       # physical 1-based line (JSONL, JSON decode errors, CSV)
    label: str | None = None      # "row 3", "item 2": said in the message

    def error(self, path: str, message: str, field: str | None = None) -> UserError:
        suffix = f" ({self.label})" if self.label else ""
        return UserError(message + suffix, path=path, line=self.line, field=field)


# ---------------------------------------------------------------------------------------------
# Bytes and text as common tools save them.

_BOM = b"\xef\xbb\xbf"  # what Notepad, Excel's "CSV UTF-8" and many Windows tools write first


def _read_bytes(path: Path) -> bytes:
    """The file's bytes after a UTF-8 byte-order mark; empty and UTF-16 files are refused."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError("the file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8",
                        path=str(path), line=1)
    data = data[len(_BOM):] if data.startswith(_BOM) else data
    if not data.strip():
        raise UserError("file is empty", path=str(path))
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8",
                        path=str(path), line=line) from None


# Python's json keeps the last of two equal keys in an object without a word: one of the user's
# values would be dropped. Such objects are refused, naming the key.

class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise _DuplicateKey()
    return obj


def parse_json(text: str, path: str | os.PathLike, first_line: int = 1) -> Any:
    """json.loads that refuses a key given twice in one object (a UserError naming it); JSON
    syntax errors stay json.JSONDecodeError for the caller. `first_line`: where `text` starts."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        line, key = _first_duplicate_key(text)
        raise UserError("key given twice in one JSON object; which value is meant is ambiguous",
                        path=str(path), line=first_line + line - 1, field=key) from None


# Strings and brackets: enough to walk the objects of text that json has already parsed.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def _first_duplicate_key(text: str) -> tuple[int, str]:
    """(1-based line, dotted key path) of the first key repeated within one object of valid JSON."""
    frames: list[tuple[set | None, str]] = []   # open objects (keys so far) and arrays (None), named
    key, prev = "", None
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in "{[":
            # a container is named by its key, an array's items by the array
            name = key if prev is not None and prev.group() == ":" else (frames[-1][1] if frames else "")
            frames.append((set() if tok == "{" else None, name))
        elif tok in "}]":
            frames.pop()
        elif tok == ":":
            key = json.loads(prev.group())
            if key in frames[-1][0]:
                names = [n for _, n in frames if n] + [key]
                dotted = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
                return text.count("\n", 0, prev.start()) + 1, ".".join(dotted)
            frames[-1][0].add(key)
        prev = m
    raise AssertionError("json reported a repeated key that is not there")


# ---------------------------------------------------------------------------------------------
# Readers: yield (where, row dict). Tabular readers first return their column names.

def _read_jsonl(path: Path) -> Iterator[tuple[_Where, dict]]:
    data = _read_bytes(path)
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8",
                            path=str(path), line=i) from None
        try:
            row = parse_json(text, path, first_line=i)  # a CRLF line's "\r" is JSON whitespace
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", path=str(path), line=i) from None
        if not isinstance(row, dict):
            raise UserError(f"expected a JSON object, got {type(row).__name__}", path=str(path), line=i)
        yield _Where(line=i), row


def jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """A JSONL file's objects with their line numbers, for rows of another shape than a dataset's (e.g. rDPO
    pairs); a bad line, or one that is not an object, is a UserError naming the file and line."""
    for where, row in _read_jsonl(Path(path)):
        yield where.line, row


def _read_json(path: Path) -> Iterator[tuple[_Where, dict]]:
    text = _decode(path, _read_bytes(path))
    try:
        doc = parse_json(text, path)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg} (column {e.colno})", path=str(path), line=e.lineno) from None
    if not isinstance(doc, list):
        raise UserError(f"expected a JSON list of objects, got {type(doc).__name__} "
                        "(use .jsonl for one object per line)", path=str(path))
    if not doc:
        raise UserError("the JSON list is empty", path=str(path))
    for i, row in enumerate(doc, start=1):
        if not isinstance(row, dict):
            raise UserError(f"expected a JSON object, got {type(row).__name__} (item {i})", path=str(path))
        yield _Where(label=f"item {i}"), row


def _csv_header(path: Path, reader) -> list[str]:
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as e:
        raise UserError(f"unreadable CSV header: {e}", path=str(path), line=1) from None
    for i, name in enumerate(header):
        if name and name in header[:i]:
            raise UserError("column named twice in the header; which one is meant is ambiguous",
                            path=str(path), line=1, field=name)
    return header


def _csv_error(path: Path, e: csv.Error, text: str, start: int, header: list[str]) -> UserError:
    """A csv.Error of the row that starts on line `start`, said plainly, naming its column if it can."""
    if "unexpected end of data" in str(e):
        # Read leniently, the unclosed field swallows the rest of the file: it is the row's last one.
        rest = "".join(io.StringIO(text, newline="").readlines()[start - 1:])
        n = len(next(csv.reader(io.StringIO(rest, newline=""))))
        return UserError("unterminated quote: this quoted field never closes, so the rest of the file would "
                         "become one field", path=str(path), line=start,
                         field=header[n - 1] if n <= len(header) else None)
    if "expected after" in str(e):
        return UserError("stray quote: text follows a closing quote (a quoted field left open, or a quote "
                         "inside a cell not written as \"\")", path=str(path), line=start)
    return UserError(f"malformed CSV: {e}", path=str(path), line=start)


def _csv_rows(path: Path) -> tuple[list[str], Iterator[tuple[_Where, dict]]]:
    text = _decode(path, _read_bytes(path))
    # Long model responses exceed the csv module's default 128 KiB cell limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # strict: a stray or unclosed quote is an error, not a guess (the lenient reader would make the
    # rest of the file one field). newline="": CRLF and quoted line breaks as Excel writes them.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = _csv_header(path, reader)

    def rows() -> Iterator[tuple[_Where, dict]]:
        n = 0
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise _csv_error(path, e, text, start, header) from None
            if not any(v.strip() for v in values):
                continue
            n += 1
            where = _Where(line=start, label=f"CSV row {n}")
            if len(values) != len(header):
                raise where.error(str(path), f"expected {len(header)} fields as in the header, got {len(values)}")
            # An empty CSV cell means "no value".
            yield where, {h: (v if v != "" else None) for h, v in zip(header, values)}

    return header, rows()


def _arrow_rows(table_batches) -> Iterator[tuple[_Where, dict]]:
    n = 0
    for batch in table_batches:
        for row in batch.to_pylist():
            n += 1
            yield _Where(label=f"row {n}"), row


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[tuple[_Where, dict]]]:
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise UserError("file is empty", path=str(path))
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise UserError(f"not a readable parquet file: {' '.join(str(e).split())[:200]}", path=str(path)) from None
    if pf.metadata.num_rows == 0:
        raise UserError("the parquet file has no rows", path=str(path))
    columns = list(pf.schema_arrow.names)
    return columns, _arrow_rows(pf.iter_batches(batch_size=4096))


def _dataset_rows(ds, path: str) -> tuple[list[str], Iterator[tuple[_Where, dict]]]:
    if len(ds) == 0:
        raise UserError("the dataset has no rows", path=path)
    columns = list(ds.column_names)
    return columns, _arrow_rows(ds.with_format("arrow").iter(batch_size=4096))


def _pick_split(obj, split: str, path: str):
    from datasets import DatasetDict

    if isinstance(obj, DatasetDict):
        if split not in obj:
            raise UserError(f"no split {split!r}; available: {', '.join(obj)}", path=path, field="hf_split")
        return obj[split]
    return obj


def _hf_disk_rows(path: Path, split: str):
    from datasets import load_from_disk

    try:
        obj = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise UserError(f"not a Hugging Face dataset folder (save_to_disk): {e}", path=str(path)) from None
    return _dataset_rows(_pick_split(obj, split, str(path)), str(path))


def _hub_rows(source: str, split: str):
    from datasets import load_dataset

    try:
        ds = load_dataset(source, split=split)
    except Exception as e:  # offline, unknown id, bad split: all user-facing
        msg = " ".join(str(e).split())[:300]
        raise UserError(f"cannot load hub dataset: {type(e).__name__}: {msg}", path=source) from None
    return _dataset_rows(ds, source)


def detect_format(source: str | os.PathLike) -> str:
    """The format name for a path or hub id (one of FORMATS); raises UserError if none fits."""
    path = Path(source)
    if path.is_dir():
        if any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf-disk"
        raise UserError("a folder is only accepted as a Hugging Face dataset saved with save_to_disk",
                        path=str(path))
    if path.exists():
        fmt = _EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"unsupported file extension {path.suffix or '(none)'!r}; "
                            f"use one of {', '.join(sorted(_EXTENSIONS))}", path=str(path))
        return fmt
    text = str(source)
    # Looks like "owner/name" with no file extension and no local path parts: a hub id.
    if (text.count("/") == 1 and not text.startswith((".", "/", "~"))
            and Path(text).suffix.lower() not in _EXTENSIONS and " " not in text):
        return "hub"
    raise UserError("file not found", path=text)


# ---------------------------------------------------------------------------------------------
# Row conversion through a ColumnMapping.

def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _response_list(value: Any, name: str, from_csv: bool) -> list[str]:
    if from_csv and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowProblem(name, f"a list cell must be a JSON list of strings: {e.msg}") from None
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from pandas
        value = value.tolist()
    if from_csv and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RowProblem(name, f"expected a list of strings, got {type(value).__name__}")
    return [check_response(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _convert_mapped(row: dict, mapping: ColumnMapping, *, from_csv: bool, native: bool) -> RowRecord:
    prompt_value = row.get(mapping.prompt)
    if _is_missing(prompt_value):
        raise RowProblem(mapping.prompt, "missing prompt" if mapping.prompt in row else "missing field")
    record = RowRecord(prompt=check_prompt(prompt_value, mapping.prompt))
    for single, many, out in ((mapping.negative, mapping.negatives, record.negatives),
                              (mapping.positive, mapping.positives, record.positives)):
        if many and not _is_missing(row.get(many)):
            out.extend(_response_list(row[many], many, from_csv))
        if single and not _is_missing(row.get(single)):
            out.append(check_response(row[single], single))
    if native:
        if mapping.negatives is None and mapping.negative is None:
            raise RowProblem("negatives", "missing field (give 'negatives': [...] or 'negative': '...')")
        if not record.negatives:
            name = mapping.negatives or mapping.negative
            raise RowProblem(name, "no negative response" if name in row else "missing field")
    elif not record.negatives and not record.positives:
        raise RowProblem(mapping.negative or mapping.negatives or mapping.positive or mapping.positives,
                         "row has no negative or positive response")
    if mapping.id:
        value = row.get(mapping.id)
        if not _is_missing(value):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise RowProblem(mapping.id, f"expected a string id, got {type(value).__name__}")
            record.id = str(value).strip()
            if not record.id:
                raise RowProblem(mapping.id, "empty id")
    for col in mapping.meta:
        value = row.get(col)
        if _is_missing(value):
            continue
        if col == "meta" and native and not isinstance(value, dict):
            raise RowProblem(col, f"expected an object, got {type(value).__name__}")
        if isinstance(value, dict):
            record.meta.update(value)
        else:
            record.meta[col] = value
    return record


# ---------------------------------------------------------------------------------------------
# Merging rows into examples.

@dataclass
class LoadStats:
    format: str = ""
    rows: int = 0
    skipped_rows: int = 0            # rows a preset found without a usable label
    dropped_without_negative: int = 0  # prompts whose rows held only positives
    conflicts: int = 0               # responses marked both bad and good for one prompt (kept as negatives)
    examples: list[Example] = field(default_factory=list)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _merge(records: Iterable[tuple[_Where, RowRecord]], path: str, stats: LoadStats,
           source_name: str) -> list[Example]:
    order: list[str] = []
    merged: dict[str, RowRecord] = {}
    ids: dict[str, tuple[str, _Where]] = {}       # id -> (prompt key, first place)
    for where, rec in records:
        key = prompt_key(rec.prompt)
        if rec.id is not None:
            seen = ids.get(rec.id)
            if seen is not None and seen[0] != key:
                first = seen[1].label or f"line {seen[1].line}"
                raise where.error(path, f"duplicate id {rec.id!r} (first used at {first} for another prompt)",
                                  field="id")
            ids.setdefault(rec.id, (key, where))
        if key not in merged:
            order.append(key)
            merged[key] = RowRecord(prompt=rec.prompt, id=rec.id, meta=dict(rec.meta))
        target = merged[key]
        target.negatives.extend(rec.negatives)
        target.positives.extend(rec.positives)
        if target.id is None:
            target.id = rec.id
        for k, v in rec.meta.items():
            target.meta.setdefault(k, v)
    examples = []
    used_ids = {r.id for r in merged.values() if r.id is not None}
    for key in order:
        rec = merged[key]
        negatives = _unique(rec.negatives)
        bad = set(negatives)
        positives = [p for p in _unique(rec.positives) if p not in bad]
        stats.conflicts += len(_unique(rec.positives)) - len(positives)
        if not negatives:
            stats.dropped_without_negative += 1
            continue
        ex_id = rec.id
        if ex_id is None:
            ex_id = f"p-{key}"
            if ex_id in used_ids:  # a user id that happens to look like ours
                raise UserError(f"id {ex_id!r} clashes with a generated id", path=path, field="id")
        meta = dict(rec.meta)
        meta.setdefault("source", source_name)
        examples.append(Example(id=ex_id, prompt=rec.prompt, negatives=negatives,
                                positives=positives, meta=meta))
    return examples


# ---------------------------------------------------------------------------------------------
# Public API.

def _suggest_preset(columns: Sequence[str]) -> str:
    for name, preset in PRESETS.items():
        if set(preset.columns) <= set(columns):
            return f"; the columns look like {name!r}: pass preset={name!r}"
    return ""


def _column_hint(columns: Sequence[str], native: bool) -> str:
    """Why a column may be missing: another separator than the comma (Excel in many locales saves
    ';'), or a layout that a preset reads."""
    if len(columns) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab")):
            if sep in columns[0]:
                return (f"; the header looks {name}-separated, and CSV files are read comma-separated "
                        "(in Excel: save as 'CSV UTF-8 (Comma delimited)')")
    return _suggest_preset(columns) if native else ""


def _load(source: str | os.PathLike, *, format: str | None, mapping: ColumnMapping | None,
          preset: str | None, hf_split: str) -> LoadStats:
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}",
                        field="preset")
    if preset is not None and mapping is not None:
        raise UserError("give either a preset or a column mapping, not both", field="preset")
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}", field="format")
    path_text = str(source)
    fmt = format or detect_format(source)
    if fmt != "hub" and not Path(source).exists():
        raise UserError("file not found", path=path_text)
    path = Path(source)
    stats = LoadStats(format=fmt)

    columns: list[str] | None
    if fmt == "jsonl":
        columns, rows = None, _read_jsonl(path)
    elif fmt == "json":
        columns, rows = None, _read_json(path)
    elif fmt == "csv":
        columns, rows = _csv_rows(path)
    elif fmt == "parquet":
        columns, rows = _parquet_rows(path)
    elif fmt == "hf-disk":
        columns, rows = _hf_disk_rows(path, hf_split)
    else:
        columns, rows = _hub_rows(path_text, hf_split)

    native = preset is None and mapping is None
    if columns is not None:  # tabular: check the columns once, up front
        if preset is not None:
            needed = list(PRESETS[preset].columns)
        elif mapping is not None:
            needed = mapping.columns()
        else:
            mapping = native_mapping(columns)
            needed = ["prompt"]
            if mapping.negative is None and mapping.negatives is None:
                missing = "negative" if fmt == "csv" else "negatives"
                raise UserError(f"missing column (columns: {', '.join(columns)}){_column_hint(columns, True)}",
                                path=path_text, field=missing)
        for col in needed:
            if col not in columns:
                raise UserError(f"missing column (columns: {', '.join(columns)}){_column_hint(columns, native)}",
                                path=path_text, field=col)

    def records() -> Iterator[tuple[_Where, RowRecord]]:
        for where, row in rows:
            stats.rows += 1
            try:
                if preset is not None:
                    for col in PRESETS[preset].columns:  # JSON rows: per-row check
                        if col not in row:
                            raise RowProblem(col, "missing field")
                    rec = PRESETS[preset].convert(row)
                    if rec is None:
                        stats.skipped_rows += 1
                        continue
                else:
                    row_mapping = mapping or native_mapping(row)
                    rec = _convert_mapped(row, row_mapping, from_csv=fmt == "csv", native=native)
            except RowProblem as e:
                raise where.error(path_text, e.message, field=e.field) from None
            yield where, rec

    stats.examples = _merge(records(), path_text, stats, source_name=path.name if fmt != "hub" else path_text)
    if not stats.examples:
        why = f" ({stats.rows} rows read, {stats.skipped_rows} skipped, " \
              f"{stats.dropped_without_negative} prompts had only positives)"
        raise UserError("no example with a negative response" + why, path=path_text)
    return stats


def load_examples(source: str | os.PathLike, *, format: str | None = None,
                  mapping: ColumnMapping | None = None, preset: str | None = None,
                  hf_split: str = "train", limit: int | None = None) -> list[Example]:
    """Read and validate examples from a file, a save_to_disk folder or a hub id.

    format: one of FORMATS, else inferred from the extension (a folder is a save_to_disk
    dataset; "owner/name" that is not a local path is a hub id). mapping or preset: how to read
    non-native columns. limit: keep the first `limit` examples (in order of first appearance),
    after the whole source was validated. Raises UserError on any problem.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}", field="limit")
    examples = _load(source, format=format, mapping=mapping, preset=preset, hf_split=hf_split).examples
    return examples if limit is None else examples[:limit]


def validate_file(path: str | os.PathLike, **kwargs) -> dict:
    """Load `path` as `load_examples` would and summarise it; raises UserError on bad data.

    Returns {"examples", "prompts", "negatives", "positives", "rows", "format",
             "skipped_rows", "dropped_without_negative", "conflicts"}.
    """
    limit = kwargs.pop("limit", None)
    stats = _load(path, format=kwargs.pop("format", None), mapping=kwargs.pop("mapping", None),
                  preset=kwargs.pop("preset", None), hf_split=kwargs.pop("hf_split", "train"))
    if kwargs:
        raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
    examples = stats.examples if limit is None else stats.examples[:limit]
    return {
        "examples": len(examples),
        "prompts": len({prompt_key(ex.prompt) for ex in examples}),
        "negatives": sum(len(ex.negatives) for ex in examples),
        "positives": sum(len(ex.positives) for ex in examples),
        "rows": stats.rows,
        "format": stats.format,
        "skipped_rows": stats.skipped_rows,
        "dropped_without_negative": stats.dropped_without_negative,
        "conflicts": stats.conflicts,
    }


def save_examples(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    """Write examples as native JSONL, atomically; `load_examples(path)` reads them back."""
    write_jsonl(path, (ex.to_json() for ex in examples))
