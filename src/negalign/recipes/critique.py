"""rDPO data generation: a teacher answers, critiques its answer against a principle, and revises it.

For each prompt the teacher holds ONE chat:

    user: x                          -> assistant: y_o       (the original answer)
    user: critique request            -> assistant: critique  (against the preset's principle)
    user: revision request            -> assistant: y_r       (the revision)

Critique presets (src/negalign/recipes/critique_presets/*.yaml, the project's own texts) give the principle, the two
requests and the prompts: sets of requests, each wrapped in one of the set's templates (a jailbreak
persona, a stated stance, an injected role-play persona). Any key can be overridden in the config.

critique.jsonl gets one row per prompt, written and fsynced chunk by chunk; a rerun skips the
prompts already there, so an interrupted run resumes without loss or duplicates. Empty teacher
output is recorded with its reason and skipped; a teacher that fails in an expected way (server
down after its retries, an HTTP or I/O error, a malformed reply, out of memory) is recorded as an
error and retried by the next run. Any other exception is a bug and stops the run. A run in which
no prompt succeeded is an error (`require_success`).
"""

from __future__ import annotations

import json
import re
import string
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from negalign.base.errors import UserError
from negalign.base.io import JsonlAppender, read_jsonl_tolerant
from negalign.base.rundir import Pin, RunDir
from negalign.data.loaders import parse_json
from negalign.data.records import Messages, prompt_key
from negalign.generation.base import GenerationConfig

PRESETS_DIR = Path(__file__).parent / "critique_presets"
CRITIQUE_FILE = "critique.jsonl"
# critique.jsonl.meta.json pins the settings that made the rows: a rerun with others must not mix rows in.
CRITIQUE_PIN = Pin("this critique file was made", "use a new run directory or delete the file")

# Statuses of a critique row. "error" rows are retried by the next run; the others are final.
OK, SKIPPED, ERROR = "ok", "skipped", "error"


# ---------------------------------------------------------------- presets and templates

@dataclass
class PromptSet:
    """Requests and the templates that wrap them; request i gets wrapper (i mod len(wrappers)), or
    every wrapper when `every_wrapper` (a short hand-written list then makes len(items) x len(wrappers))."""
    name: str
    wrappers: list[str]
    items: list[str] = field(default_factory=list)
    source: str | None = None   # pyrit | strongreject | strongreject-small | advbench | a .txt/.jsonl file
    every_wrapper: bool = False


@dataclass
class CritiquePreset:
    name: str
    principle: str
    critique_request: str
    revision_request: str
    prompt_sets: list[PromptSet]
    description: str = ""
    where: str | None = None    # the YAML file it came from, for error messages


def check_template(template: Any, allowed: set[str], *, where: str | None, key: str) -> str:
    """A template is a non-empty string whose {placeholders} are all in `allowed`."""
    if not isinstance(template, str) or not template.strip():
        raise UserError("must be a non-empty string", path=where, field=key)
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UserError(f"bad template ({e}); write {{{{ and }}}} for literal braces", path=where, field=key) from None
    unknown = sorted(names - allowed)
    if unknown:
        raise UserError(f"unknown placeholder {{{unknown[0]}}}; allowed: "
                        f"{', '.join('{' + a + '}' for a in sorted(allowed)) or 'none'}", path=where, field=key)
    return template


def render(template: str, **values: str) -> str:
    return template.format(**values)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", path=str(path),
                        line=None if line is None else line + 1) from None
    if not isinstance(doc, dict):
        raise UserError("a preset must be a mapping", path=str(path))
    return doc


def load_preset(name_or_path: str, overrides: dict[str, Any] | None = None) -> CritiquePreset:
    """A bundled preset by name (see `preset_names()`) or a YAML file in the same schema.

    `overrides` replaces top-level keys (principle, critique_request, revision_request,
    prompt_sets); None values are ignored.
    """
    path = Path(name_or_path)
    if name_or_path in preset_names():
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    elif not (path.suffix in (".yaml", ".yml") and path.exists()):
        raise UserError(f"unknown preset {name_or_path!r}: name one of {', '.join(preset_names())} "
                        f"or an existing .yaml file", field="critique.preset")
    where = str(path)
    doc = _read_yaml(path)
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {"name", "description", "principle", "critique_request", "revision_request", "prompt_sets"}
    for key in doc:
        if key not in known:
            raise UserError(f"unknown key (known: {', '.join(sorted(known))})", path=where, field=key)
    principle = check_template(doc.get("principle"), set(), where=where, key="principle")
    sets = doc.get("prompt_sets")
    if not isinstance(sets, list) or not sets:
        raise UserError("must be a non-empty list of prompt sets", path=where, field="prompt_sets")
    return CritiquePreset(
        name=str(doc.get("name") or path.stem),
        description=str(doc.get("description") or ""),
        principle=principle,
        critique_request=check_template(doc.get("critique_request"), {"principle"}, where=where,
                                         key="critique_request"),
        revision_request=check_template(doc.get("revision_request"), {"principle"}, where=where,
                                        key="revision_request"),
        prompt_sets=[_prompt_set(s, i, where) for i, s in enumerate(sets)],
        where=where,
    )


def _prompt_set(raw: Any, i: int, where: str) -> PromptSet:
    key = f"prompt_sets[{i}]"
    if not isinstance(raw, dict):
        raise UserError("must be a mapping with wrappers and items or a source", path=where, field=key)
    unknown = sorted(set(raw) - {"name", "wrappers", "items", "source", "every_wrapper"})
    if unknown:
        raise UserError("unknown key (known: every_wrapper, items, name, source, wrappers)", path=where,
                        field=f"{key}.{unknown[0]}")
    if not isinstance(raw.get("every_wrapper", False), bool):
        raise UserError("must be true or false", path=where, field=f"{key}.every_wrapper")
    wrappers = raw.get("wrappers") or ["{request}"]
    if not isinstance(wrappers, list):
        raise UserError("must be a list of templates", path=where, field=f"{key}.wrappers")
    wrappers = [check_template(w, {"request"}, where=where, key=f"{key}.wrappers[{j}]") for j, w in enumerate(wrappers)]
    for j, w in enumerate(wrappers):
        if "{request}" not in w:
            raise UserError("a wrapper must contain {request}", path=where, field=f"{key}.wrappers[{j}]")
    items = raw.get("items") or []
    if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
        raise UserError("must be a list of non-empty strings", path=where, field=f"{key}.items")
    source = raw.get("source")
    if not items and not source:
        raise UserError("needs items or a source", path=where, field=key)
    return PromptSet(name=str(raw.get("name") or source or f"set{i}"), wrappers=wrappers, items=list(items),
                     source=None if source is None else str(source), every_wrapper=raw.get("every_wrapper", False))


def source_requests(source: str) -> list[str]:
    """Request texts from a bundled prompt source or a file (.txt: one per line; .jsonl: 'prompt' field)."""
    from negalign.data import eval_sets

    if source == "pyrit":
        from negalign.data.pyrit import bundled_negatives

        # the training split only: the held-out pyrit prompts stay unseen for evaluation
        return [ex.prompt_text for ex in bundled_negatives("train") if len(ex.prompt) == 1]
    if source in eval_sets.EVAL_SETS:
        return [row["prompt"] for row in eval_sets.eval_prompts(source)]
    path = Path(source)
    if not path.exists():
        raise UserError(f"unknown prompt source {source!r}: use pyrit, {', '.join(eval_sets.EVAL_SETS)}, "
                        f"or a .txt/.jsonl file", field="source")
    # utf-8-sig: a byte-order mark, as Windows tools write, is not part of the first request
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                text = parse_json(line, path, first_line=n)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError("expected a JSON object with a 'prompt' string", path=str(path), line=n) from None
            if not isinstance(text, str) or not text.strip():
                raise UserError("must be a non-empty string", path=str(path), line=n, field="prompt")
            out.append(text)
        return out
    return [line.strip() for line in lines if line.strip()]


@dataclass
class CritiquePrompt:
    id: str
    prompt: Messages          # what the student is trained on: the wrapped request as one user turn
    meta: dict[str, Any]


def build_prompts(preset: CritiquePreset, *, limit: int | None = None,
                  exclude: set[str] | frozenset[str] = frozenset()) -> list[CritiquePrompt]:
    """The preset's prompts, its sets interleaved (so a limit samples every set), deduplicated.

    `exclude`: request texts to leave out (e.g. evaluation prompts).
    """
    per_set = []
    for s in preset.prompt_sets:
        requests = list(s.items) + (source_requests(s.source) if s.source else [])
        rows = []
        kept = [r for r in requests if r not in exclude]
        # pass k gives request i wrapper (i + k) mod W: the first pass is the one-wrapper-each order, so a
        # limit still spreads over the requests before any of them comes back in another wrapper
        for k in range(len(s.wrappers) if s.every_wrapper else 1):
            for i, req in enumerate(kept):
                w = (i + k) % len(s.wrappers)
                rows.append((s.name, i, w, render(s.wrappers[w], request=req.strip()), req))
        per_set.append(rows)
    out, seen = [], set()
    for k in range(max((len(r) for r in per_set), default=0)):
        for rows in per_set:
            if k >= len(rows):
                continue
            set_name, i, w, text, req = rows[k]
            messages = [{"role": "user", "content": text}]
            key = prompt_key(messages)
            if key in seen:
                continue
            seen.add(key)
            out.append(CritiquePrompt(id=f"{preset.name}-{key}", prompt=messages,
                                      meta={"preset": preset.name, "set": set_name, "item": i, "wrapper": w,
                                            "request": req}))
            if limit is not None and len(out) >= limit:
                return out
    return out


# ---------------------------------------------------------------- settings

@dataclass
class CritiqueConfig:
    """The `critique` section of an rDPO config."""
    preset: str = "safety"               # a bundled preset name or a preset YAML file
    teacher: Any = None                  # generation spec (see generation.factory); empty = the student model
    limit: int | None = None             # first N prompts (sets interleaved)
    sets: list[str] | None = None        # the preset's prompt sets to use, by name; empty = all
    principle: str | None = None         # overrides of the preset's texts
    critique_request: str | None = None
    revision_request: str | None = None
    system_prompt: str | None = None     # the teacher's system turn, if any
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 160            # answer and revision
    precision: str = "auto"              # auto | bf16 | fp32: a local teacher's weights (sampling needs no fp32
                                          # copy; auto: bf16 where this machine runs it fast)
    critique_max_new_tokens: int = 96
    revision_turn: str = "chat"          # chat: the revision is the chat's third turn; quoted: a new one-turn
                                          # chat that quotes the message, the answer and the critique
    seed: int = 0
    prompts_per_write: int = 16
    output: str = CRITIQUE_FILE          # relative to the run directory


def preset_for(c: CritiqueConfig, where: str | None = None) -> CritiquePreset:
    """The configured preset with the config's text overrides and `sets`; `where`: the config file, for errors."""
    preset = load_preset(c.preset, {"principle": c.principle, "critique_request": c.critique_request,
                                    "revision_request": c.revision_request})
    if not c.sets:
        return preset
    names = [s.name for s in preset.prompt_sets]
    unknown = [n for n in c.sets if n not in names]
    if unknown:
        raise UserError(f"preset {preset.name!r} has no prompt set {unknown[0]!r} (it has: {', '.join(names)})",
                        path=where, field="critique.sets")
    return replace(preset, prompt_sets=[s for s in preset.prompt_sets if s.name in c.sets])


def teacher_spec(c: CritiqueConfig, student: str) -> dict:
    from negalign.generation.factory import parse_spec

    if c.teacher in (None, "", {}):
        return {"backend": "transformers", "model": student}
    spec = parse_spec(c.teacher)
    if spec.get("backend", "auto") in ("transformers", "auto", "vllm", "llamacpp"):
        spec.setdefault("model", student)
    return spec


def critique_settings(c: CritiqueConfig, preset: CritiquePreset, teacher: Any) -> dict:
    """What makes the critique file what it is; a rerun with other settings must not mix rows in."""
    desc = teacher if isinstance(teacher, (dict, str)) else repr(teacher)
    keep = {k: v for k, v in asdict(c).items() if k not in ("teacher", "limit", "sets", "prompts_per_write", "output",
                                                           "principle", "critique_request", "revision_request")}
    if c.revision_turn == "chat":  # the default: files made before the setting existed still match
        keep.pop("revision_turn")
    return {**keep, "teacher": desc, "principle": preset.principle, "critique_request": preset.critique_request,
            "revision_request": preset.revision_request}


# ---------------------------------------------------------------- the teacher chat

class TeacherReplyError(Exception):
    """The teacher answered, but not with one reply per conversation."""


def teacher_errors() -> tuple[type[BaseException], ...]:
    """The failures of a teacher that are recorded per row (and retried by the next run): the
    server's (UserError after its retries; OSError for connections, timeouts and files), a
    malformed reply, and torch's out-of-memory. Anything else is a bug and propagates."""
    errors: tuple[type[BaseException], ...] = (UserError, OSError, TeacherReplyError)
    torch = sys.modules.get("torch")  # only a teacher that runs torch can run out of its memory
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return errors + (oom,) if isinstance(oom, type) else errors


_LABEL = re.compile(r"^\s*(?:\*\*)?(?:here(?:'s| is) (?:the |my )?)?(?:revised|rewritten|new|improved|updated)"
                    r"(?: version of (?:the|my) )?(?: answer| response| reply)?(?:\*\*)?\s*:\s*(?:\*\*)?\s*",
                    re.IGNORECASE)


_TAGS = re.compile(r"\[/?ANSWER\]", re.IGNORECASE)  # the quoted revision's markers, copied back by the teacher


def clean_reply(text: str) -> str:
    """Strip a label a teacher often puts before its revision ("Revised answer:"), the quoted revision's
    [ANSWER] markers, and wrapping quotes."""
    text = _TAGS.sub("", (text or "")).strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _ask(teacher, conversations: list[Messages], config: GenerationConfig) -> list[str | Exception]:
    """One reply per conversation, or the exception that kept the teacher from giving one.

    A failing batch is retried one conversation at a time, so one bad prompt cannot sink the others.
    Only `teacher_errors()` are caught; any other exception (a bug) propagates.
    """
    if not conversations:
        return []
    expected = teacher_errors()
    try:
        return _replies(teacher.generate(conversations, config), len(conversations))
    except expected as e:
        if len(conversations) == 1:
            return [e]
    out: list[str | Exception] = []
    for conv in conversations:
        try:
            out.extend(_replies(teacher.generate([conv], config), 1))
        except expected as e:
            out.append(e)
    return out


def _replies(result, n: int) -> list[str]:
    if not isinstance(result, list) or len(result) != n:
        raise TeacherReplyError(f"teacher returned {type(result).__name__} of length "
                         f"{len(result) if hasattr(result, '__len__') else '?'} for {n} conversations")
    out = []
    for r in result:
        text = r[0] if isinstance(r, list) and r else r
        out.append(text if isinstance(text, str) else "")
    return out


def _error_text(e: Exception) -> str:
    return f"teacher_error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"


REVISION_TURNS = ("chat", "quoted")

# revision_turn: quoted. A small teacher often reads a third chat turn as a new request ("I cannot provide
# a new answer to your original message") or repeats the user; here it sees the exchange as text.
QUOTED_REVISION = """Below are a user's message, an assistant's answer to it, and a review of that answer.

[USER MESSAGE]
{message}
[/USER MESSAGE]

[ANSWER]
{answer}
[/ANSWER]

[REVIEW]
{critique}
[/REVIEW]

Write the answer the assistant should have given, following this guideline: {principle}
Use the review where it is right. Write only the new answer, addressed to the user, in your own words; \
do not repeat the guideline, the user's message or the review."""


def quoted_revision(prompt: Messages, answer: str, critique: str, principle: str) -> str:
    """The revision request of revision_turn: quoted, for one conversation."""
    message = "\n\n".join(m["content"] for m in prompt if m["role"] == "user")
    return QUOTED_REVISION.format(message=message, answer=answer, critique=critique, principle=principle)


def system_turn(c: CritiqueConfig) -> Messages:
    """The teacher's system turn, or none."""
    return [{"role": "system", "content": c.system_prompt}] if c.system_prompt else []


def revision_conversation(row: dict, preset: CritiquePreset, c: CritiqueConfig) -> Messages:
    """What the teacher is asked for the revision of `row` (its prompt, original and critique): the chat's
    first two turns and the revision request (revision_turn "chat"), or one quoted message ("quoted");
    after the system turn when one is set."""
    system = system_turn(c)
    if c.revision_turn == "quoted":
        return system + [{"role": "user", "content": quoted_revision(row["prompt"], row["original"], row["critique"],
                                                                     preset.principle)}]
    return system + row["prompt"] + [
        {"role": "assistant", "content": row["original"]},
        {"role": "user", "content": render(preset.critique_request, principle=preset.principle)},
        {"role": "assistant", "content": row["critique"]},
        {"role": "user", "content": render(preset.revision_request, principle=preset.principle)}]


def critique_chunk(teacher, prompts: list[CritiquePrompt], preset: CritiquePreset, c: CritiqueConfig,
                   seed: int) -> list[dict]:
    """Run the three teacher turns for a chunk of prompts (batched per turn); one row per prompt."""
    critique_msg = render(preset.critique_request, principle=preset.principle)
    rows = [{"id": p.id, "prompt": p.prompt, "meta": p.meta, "status": OK, "reason": None,
             "original": None, "critique": None, "revision": None} for p in prompts]
    convs = [system_turn(c) + p.prompt for p in prompts]

    def turn(field: str, followup: str | None, max_new: int, k: int) -> None:
        live = [i for i, r in enumerate(rows) if r["status"] == OK]
        if followup is not None:
            for i in live:
                convs[i] = convs[i] + [{"role": "user", "content": followup}]
        gen = GenerationConfig(n=1, temperature=c.temperature, top_p=c.top_p, max_new_tokens=max_new,
                               seed=seed * 3 + k)
        for i, reply in zip(live, _ask(teacher, [convs[i] for i in live], gen)):
            if isinstance(reply, Exception):
                rows[i].update(status=ERROR, reason=_error_text(reply))
                continue
            text = clean_reply(reply) if field == "revision" else reply.strip()
            rows[i][field] = text
            if not text:
                rows[i].update(status=SKIPPED, reason=f"empty_{field}")
            else:
                convs[i] = convs[i] + [{"role": "assistant", "content": text}]

    turn("original", None, c.max_new_tokens, 0)
    turn("critique", critique_msg, c.critique_max_new_tokens, 1)
    for i, r in enumerate(rows):
        if r["status"] == OK:
            convs[i] = revision_conversation(r, preset, c)
    turn("revision", None, c.max_new_tokens, 2)
    return rows


def read_critiques(path: str | Path) -> dict[str, dict]:
    """Rows by prompt id; a later row for the same id (a retried error) replaces the earlier one."""
    return {row["id"]: row for row in read_jsonl_tolerant(path)}


def _describe(teacher) -> str:
    """A stable description of a teacher object (a default repr carries a memory address)."""
    text = repr(teacher)
    return type(teacher).__name__ if " at 0x" in text else text


def run_critique(prompts: list[CritiquePrompt], preset: CritiquePreset, teacher, c: CritiqueConfig, path: str | Path,
                 *, teacher_desc: Any = None, log=print) -> list[dict]:
    """Critique every prompt not yet final in `path`; return the rows of `prompts`, in order.

    Chunks have fixed boundaries and seeds, so a resumed run redoes an interrupted chunk exactly as
    the first run would have and writes only the rows still missing.
    """
    path = Path(path)
    settings = critique_settings(c, preset, teacher_desc if teacher_desc is not None else _describe(teacher))
    RunDir(path.parent).pin(RunDir.meta_beside(path), settings, CRITIQUE_PIN, error_path=path)
    done = read_critiques(path)
    final = {i for i, r in done.items() if r.get("status") in (OK, SKIPPED)}
    todo = [p for p in prompts if p.id not in final]
    log(f"critique: preset {preset.name}: {len(prompts)} prompts, {len(prompts) - len(todo)} already done")
    step = max(1, c.prompts_per_write)
    t0, n_new = time.perf_counter(), 0
    with JsonlAppender(path) as out:
        for k in range(0, len(prompts), step):
            chunk = [p for p in prompts[k:k + step] if p.id not in final]
            if not chunk:
                continue
            for row in critique_chunk(teacher, chunk, preset, c, seed=c.seed * 1_000_003 + k // step):
                out.write(row)
                done[row["id"]] = row
                if row["status"] != ERROR:
                    final.add(row["id"])
            n_new += len(chunk)
            log(f"critique: {sum(p.id in final for p in prompts)}/{len(prompts)} prompts "
                f"({n_new / (time.perf_counter() - t0):.2f} prompts/s)")
    rows = [done[p.id] for p in prompts if p.id in done]
    log(f"critique: {describe_counts(critique_counts(rows))}")
    return rows


def critique_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows are ok, and how many were skipped or failed for each reason."""
    counts: dict[str, int] = {OK: 0}
    for r in rows:
        key = OK if r["status"] == OK else (r["reason"] or r["status"]).split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """'2 ok, 1 empty_original, 1 teacher_error'."""
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def require_success(rows: list[dict], path: str | Path) -> dict[str, int]:
    """The counts of `rows`; a UserError (one line, exit code 2) when not one prompt succeeded."""
    counts = critique_counts(rows)
    if counts[OK] == 0:
        raise UserError(f"no prompt got an answer, critique and revision from the teacher "
                        f"({describe_counts(counts) if rows else 'no rows'}); each row's reason is in the file, "
                        f"and a rerun retries the teacher errors", path=str(path))
    return counts


def make_teacher(c: CritiqueConfig, student: str, *, model=None, tokenizer=None, where: str | None = None):
    """The teacher ChatGenerator and a description of it (no secrets) for the meta file."""
    from negalign.generation.factory import make_generator

    spec = teacher_spec(c, student)
    return make_generator(dict(spec), model=model, tokenizer=tokenizer, where=where, field="critique.teacher"), spec
