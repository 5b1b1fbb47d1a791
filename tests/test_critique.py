"""rDPO data generation: presets, the three-turn teacher chat, resumable output, bad teacher output."""

from __future__ import annotations

import json

import pytest

from negalign.base.errors import UserError
from negalign.generation.base import GenerationConfig
from negalign.generation.transformers_backend import TransformersGenerator
from negalign.recipes.rdpo import rdpo_settings_from_dict
from negalign.recipes.critique import (ERROR, OK, SKIPPED, CritiqueConfig, build_prompts, check_template, clean_reply,
                               critique_counts, load_preset, preset_names, read_critiques, render, run_critique)

FAST = dict(max_new_tokens=6, critique_max_new_tokens=4, prompts_per_write=2)


class Recording:
    """Wraps a ChatGenerator and keeps every conversation it was asked about."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[list] = []

    def generate(self, conversations, config: GenerationConfig):
        self.calls.append([list(c) for c in conversations])
        return self.inner.generate(conversations, config)


class Scripted:
    """A teacher whose reply depends on the conversation: '' or an exception for marked prompts."""

    def __init__(self, empty_marker: str, fail_marker: str | None, error=ConnectionError("teacher down")):
        self.empty_marker, self.fail_marker, self.error = empty_marker, fail_marker, error

    def generate(self, conversations, config):
        out = []
        for conv in conversations:
            first = conv[0]["content"]
            if self.fail_marker and self.fail_marker in first:
                raise self.error
            empty = self.empty_marker in first and len(conv) == 1
            out.append(["" if empty else f"reply to turn {len(conv)}"])
        return out


def _preset_file(tmp_path, items, **extra):
    doc = {"name": "mini", "principle": "Be honest.",
           "critique_request": "Check against: {principle}", "revision_request": "Rewrite per {principle}",
           "prompt_sets": [{"name": "s", "wrappers": ["A: {request}", "B: {request}"], "items": items}]}
    doc.update(extra)
    path = tmp_path / "mini.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is valid YAML
    return str(path)


def test_bundled_presets_render(tokenizer):
    assert {"safety", "sycophancy", "roleplay"} <= set(preset_names())
    for name in ("safety", "sycophancy", "roleplay"):
        preset = load_preset(name)
        prompts = build_prompts(preset, limit=7)
        assert len(prompts) == 7 and len({p.id for p in prompts}) == 7
        for p in prompts:
            text = p.prompt[0]["content"]
            assert p.meta["request"].strip() in text and "{" not in text
        # the critique quotes the principle; a revision request may restate it in its own words (a
        # 1.5B teacher asked to revise "per the principle: ..." often answers with the principle itself)
        assert preset.principle in render(preset.critique_request, principle=preset.principle)
        assert "{" not in render(preset.revision_request, principle=preset.principle)
    # sets are interleaved, so a small limit sees each of them
    assert {p.meta["set"] for p in build_prompts(load_preset("sycophancy"), limit=2)} == {"claims", "work"}
    # safety wraps harmful requests in several personas, and asks the same requests plain
    safety = build_prompts(load_preset("safety"), limit=24)
    wrapped = [p for p in safety if p.meta["set"] == "personas"]
    plain = [p for p in safety if p.meta["set"] == "plain"]
    assert len(wrapped) == len(plain) == 12 and len({p.meta["wrapper"] for p in wrapped}) == 6
    assert all(p.prompt[0]["content"] == p.meta["request"].strip() for p in plain)
    assert [p.meta["request"] for p in plain] == [p.meta["request"] for p in wrapped]


def test_every_wrapper_gives_each_item_every_wrapper_spread_first(tmp_path):
    sets = [{"name": "s", "wrappers": ["A: {request}", "B: {request}"], "items": ["q1", "q2", "q3"],
             "every_wrapper": True}]
    preset = load_preset(_preset_file(tmp_path, [], prompt_sets=sets))
    texts = [p.prompt[0]["content"] for p in build_prompts(preset)]
    assert texts == ["A: q1", "B: q2", "A: q3", "B: q1", "A: q2", "B: q3"]  # each request once, then again
    assert len(build_prompts(load_preset("sycophancy"))) == (16 + 12) * 3
    assert len(build_prompts(load_preset("roleplay"))) == 18 * 6
    with pytest.raises(UserError, match="every_wrapper"):
        load_preset(_preset_file(tmp_path, [], prompt_sets=[dict(sets[0], every_wrapper="yes")]))


def test_sets_choose_the_preset_prompt_sets():
    from negalign.recipes.critique import preset_for

    only = build_prompts(preset_for(CritiqueConfig(preset="sycophancy", sets=["claims"])))
    every = build_prompts(preset_for(CritiqueConfig(preset="sycophancy")))
    assert {p.meta["set"] for p in only} == {"claims"} and {p.meta["set"] for p in every} == {"claims", "work"}
    assert [p.id for p in only] == [p.id for p in every if p.meta["set"] == "claims"]
    with pytest.raises(UserError, match=r"c.yaml: field 'critique.sets': preset 'sycophancy' has no prompt set 'claim'"):
        preset_for(CritiqueConfig(preset="sycophancy", sets=["claim"]), "c.yaml")


def test_template_checks_and_overrides(tmp_path):
    with pytest.raises(UserError, match=r"unknown placeholder \{reqest\}"):
        check_template("hi {reqest}", {"request"}, where="f.yaml", key="wrappers[0]")
    with pytest.raises(UserError, match="must contain"):
        load_preset(_preset_file(tmp_path, ["x"], prompt_sets=[{"wrappers": ["no slot"], "items": ["x"]}]))
    with pytest.raises(UserError, match="unknown key"):
        load_preset(_preset_file(tmp_path, ["x"], principles="typo"))
    with pytest.raises(UserError, match="unknown preset"):
        load_preset("nonexistent")
    path = _preset_file(tmp_path, ["q1", "q2", "q3"])
    preset = load_preset(path, {"principle": "Be brief.", "critique_request": None})
    assert preset.principle == "Be brief." and preset.critique_request == "Check against: {principle}"
    prompts = build_prompts(preset, exclude={"q2"})
    assert [p.prompt[0]["content"] for p in prompts] == ["A: q1", "B: q3"]


def test_prompt_files_as_windows_tools_save_them(tmp_path):
    from negalign.recipes.critique import source_requests

    bom = b"\xef\xbb\xbf"
    (tmp_path / "p.txt").write_bytes(bom + b"first request\r\nsecond request\r\n")
    (tmp_path / "p.jsonl").write_bytes(bom + b'{"prompt": "first request"}\r\n{"prompt": "second request"}\r\n')
    for name in ("p.txt", "p.jsonl"):
        assert source_requests(str(tmp_path / name)) == ["first request", "second request"], name
    (tmp_path / "dup.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"dup.jsonl:2: field 'prompt': key given twice"):
        source_requests(str(tmp_path / "dup.jsonl"))


def test_clean_reply():
    assert clean_reply("Revised answer: I can't help with that.") == "I can't help with that."
    assert clean_reply('**Rewritten response:** "Sure, here is a safer idea."') == "Sure, here is a safer idea."
    assert clean_reply("Here is the revised answer:\nNo.") == "No."
    assert clean_reply("Revision is a skill.") == "Revision is a skill."
    assert clean_reply("   ") == ""
    assert clean_reply("[ANSWER] No, it is not. [/ANSWER]") == "No, it is not."


@pytest.mark.parametrize("preset_name", ["safety", "sycophancy", "roleplay"])
def test_three_turn_chat_with_tiny_model(tmp_path, tiny_model, tokenizer, preset_name):
    preset = load_preset(preset_name)
    prompts = build_prompts(preset, limit=2)
    teacher = Recording(TransformersGenerator(tiny_model, tokenizer))
    rows = run_critique(prompts, preset, teacher, CritiqueConfig(preset=preset_name, **FAST),
                        tmp_path / "critique.jsonl", log=lambda *_: None)
    assert [r["id"] for r in rows] == [p.id for p in prompts]
    for r in rows:
        assert r["status"] == OK and r["original"] and r["critique"] and r["revision"]
    # one chat per prompt: answer, then critique request, then revision request in the same conversation
    first, second, third = teacher.calls
    assert [len(c) for c in first] == [1, 1] and [len(c) for c in third] == [5, 5]
    conv = third[0]
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
    assert conv[1]["content"] == rows[0]["original"] and conv[3]["content"] == rows[0]["critique"]
    assert preset.principle in conv[2]["content"]
    assert conv[4]["content"] == render(preset.revision_request, principle=preset.principle)
    assert len(read_critiques(tmp_path / "critique.jsonl")) == 2


def test_resume_after_interruption(tmp_path, tiny_model, tokenizer):
    preset = load_preset("roleplay")
    prompts = build_prompts(preset, limit=6)
    cfg = CritiqueConfig(preset="roleplay", **FAST)
    path = tmp_path / "critique.jsonl"
    gen = TransformersGenerator(tiny_model, tokenizer)
    full = run_critique(prompts, preset, gen, cfg, path, teacher_desc="tiny", log=lambda *_: None)
    # A kill mid-write: the last row is torn, the one before never written.
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    teacher = Recording(gen)
    again = run_critique(prompts, preset, teacher, cfg, path, teacher_desc="tiny", log=lambda *_: None)
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(p.id for p in prompts)  # every prompt exactly once
    assert len(teacher.calls) == 3 and len(teacher.calls[0]) == 2  # only the last chunk was redone
    assert again == full  # a chunk's seed is fixed: the redo equals the first run


def test_changed_settings_refuse_to_mix(tmp_path, tiny_model, tokenizer):
    preset = load_preset("roleplay")
    prompts = build_prompts(preset, limit=1)
    path = tmp_path / "critique.jsonl"
    gen = TransformersGenerator(tiny_model, tokenizer)
    run_critique(prompts, preset, gen, CritiqueConfig(**FAST), path, teacher_desc="tiny", log=lambda *_: None)
    other = load_preset("roleplay", {"principle": "Another principle."})
    with pytest.raises(UserError, match="other settings.*principle"):
        run_critique(prompts, other, gen, CritiqueConfig(**FAST), path, teacher_desc="tiny", log=lambda *_: None)


def test_empty_and_failing_teacher_are_recorded_not_fatal(tmp_path):
    preset = load_preset(_preset_file(tmp_path, ["fine one", "EMPTY please", "FAIL now", "fine two"]))
    prompts = build_prompts(preset)
    path = tmp_path / "critique.jsonl"
    cfg = CritiqueConfig(prompts_per_write=4)
    rows = run_critique(prompts, preset, Scripted("EMPTY", "FAIL"), cfg, path, teacher_desc="s", log=lambda *_: None)
    by = {r["meta"]["request"]: r for r in rows}
    assert by["fine one"]["status"] == OK and by["fine two"]["revision"] == "reply to turn 5"
    assert by["EMPTY please"]["status"] == SKIPPED and by["EMPTY please"]["reason"] == "empty_original"
    assert by["FAIL now"]["status"] == ERROR and "ConnectionError: teacher down" in by["FAIL now"]["reason"]
    assert critique_counts(rows) == {"ok": 2, "empty_original": 1, "teacher_error": 1}
    # The next run retries only the failed prompt; the skipped one is final.
    teacher = Recording(Scripted("EMPTY", None))
    rows = run_critique(prompts, preset, teacher, cfg, path, teacher_desc="s", log=lambda *_: None)
    assert [len(c) for c in teacher.calls] == [1, 1, 1]
    assert critique_counts(rows) == {"ok": 3, "empty_original": 1}
    assert len(read_critiques(path)) == 4


def test_quoted_revision_is_a_new_one_turn_chat(tmp_path):
    """revision_turn: quoted asks for the revision in a fresh conversation that quotes the user's message,
    the answer and the critique; the pin keeps it from mixing with rows made in the chat."""
    preset = load_preset(_preset_file(tmp_path, ["fine one"]))
    prompts = build_prompts(preset)
    teacher = Recording(Scripted("EMPTY", None))
    rows = run_critique(prompts, preset, teacher, CritiqueConfig(revision_turn="quoted"), tmp_path / "q.jsonl",
                        teacher_desc="s", log=lambda *_: None)
    revision_conv = teacher.calls[2][0]
    assert len(revision_conv) == 1 and revision_conv[0]["role"] == "user"
    text = revision_conv[0]["content"]
    for quoted in ("A: fine one", "reply to turn 1", "reply to turn 3", "Be honest."):
        assert quoted in text
    assert "Rewrite per" not in text  # the preset's chat-turn request is not used
    assert rows[0]["status"] == OK and rows[0]["revision"] == "reply to turn 1"
    with pytest.raises(UserError, match="revision_turn"):
        run_critique(prompts, preset, teacher, CritiqueConfig(), tmp_path / "q.jsonl", teacher_desc="s",
                     log=lambda *_: None)
    with pytest.raises(UserError, match=r"field 'critique.revision_turn': must be one of chat, quoted"):
        rdpo_settings_from_dict({"critique": {"revision_turn": "fresh"}})


class Short:
    """A teacher that returns one reply too few for a batch: a malformed reply, not a bug of ours."""

    def generate(self, conversations, config):
        return [["reply"]] * (len(conversations) - 1)


def test_only_teacher_failures_become_error_rows(tmp_path):
    """A bug (here a KeyError) stops the run with its traceback instead of becoming a row error;
    a malformed reply is the teacher's failure and becomes one."""
    preset = load_preset(_preset_file(tmp_path, ["fine one", "FAIL now"]))
    prompts = build_prompts(preset)
    quiet = lambda *_: None  # noqa: E731
    with pytest.raises(KeyError, match="bug"):
        run_critique(prompts, preset, Scripted("EMPTY", "FAIL", KeyError("bug")), CritiqueConfig(),
                     tmp_path / "a.jsonl", teacher_desc="s", log=quiet)
    assert read_critiques(tmp_path / "a.jsonl") == {}
    rows = run_critique(prompts, preset, Short(), CritiqueConfig(), tmp_path / "b.jsonl", teacher_desc="s", log=quiet)
    assert [r["status"] for r in rows] == [ERROR, ERROR]
    assert rows[0]["reason"].startswith("teacher_error: TeacherReplyError: teacher returned list of length 0")
    import torch

    oom = Scripted("EMPTY", "FAIL", torch.OutOfMemoryError("CUDA out of memory"))
    rows = run_critique(prompts, preset, oom, CritiqueConfig(), tmp_path / "c.jsonl", teacher_desc="s", log=quiet)
    assert [r["status"] for r in rows] == [OK, ERROR] and "OutOfMemoryError" in rows[1]["reason"]


def test_critique_command_exit_code_and_counts(tmp_path, monkeypatch, capsys):
    """Some prompts ok: exit 0 and the counts; none ok: exit 2 with one line naming the file."""
    from negalign.cli.main import main
    from negalign.recipes import rdpo

    preset = _preset_file(tmp_path, ["fine one", "FAIL now", "EMPTY please"])
    monkeypatch.setattr(rdpo, "_teacher", lambda settings: (Scripted("EMPTY", "FAIL"), "scripted"))
    argv = ["critique", "--preset", preset, "--run-dir", str(tmp_path / "some")]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"critique: 1 of 3 prompts ok (1 ok, 1 teacher_error, 1 empty_original); rows in {tmp_path / 'some'}"
        f"/critique.jsonl")
    # "n" fails "fine one" and "FAIL now"; "EMPTY please" gets an empty answer
    monkeypatch.setattr(rdpo, "_teacher", lambda settings: (Scripted("EMPTY", "n"), "scripted"))
    assert main(["critique", "--preset", preset, "--run-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"negalign: error: {tmp_path / 'none'}/critique.jsonl: no prompt got an answer, critique and "
                   f"revision from the teacher (0 ok, 2 teacher_error, 1 empty_original); each row's reason is "
                   f"in the file, and a rerun retries the teacher errors"]
    assert main(["critique", "--preset", preset, "--run-dir", str(tmp_path / "none")]) == 2  # still none


def test_openai_teacher_against_real_local_server(tmp_path, tiny_model, tokenizer):
    from negalign.generation.openai_backend import OpenAIChatGenerator
    from negalign.generation.server import serve

    preset = load_preset("sycophancy")
    prompts = build_prompts(preset, limit=2)
    with serve(TransformersGenerator(tiny_model, tokenizer), host="127.0.0.1", port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        teacher = OpenAIChatGenerator(server.url, "negalign", timeout=60, max_retries=1, concurrency=2)
        rows = run_critique(prompts, preset, teacher, CritiqueConfig(**FAST), tmp_path / "c.jsonl",
                            log=lambda *_: None)
    assert all(r["status"] == OK and r["revision"] for r in rows)
    assert teacher.requests_sent == 6  # three turns for each of two prompts


def test_unreachable_server_is_an_error_row(tmp_path):
    import socket

    from negalign.generation.openai_backend import OpenAIChatGenerator

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    preset = load_preset(_preset_file(tmp_path, ["q"]))
    teacher = OpenAIChatGenerator(f"http://127.0.0.1:{port}/v1", "m", max_retries=0, timeout=2)
    rows = run_critique(build_prompts(preset), preset, teacher, CritiqueConfig(), tmp_path / "c.jsonl",
                        log=lambda *_: None)
    assert rows[0]["status"] == ERROR and rows[0]["reason"].startswith("teacher_error: UserError")


def test_critique_command(tmp_path, tiny_model_dir, capsys):
    from negalign.cli import build_parser
    from negalign.cli.rdpo import main_critique

    parser = build_parser()
    args = parser.parse_args(["critique", "--preset", "roleplay", "--model", str(tiny_model_dir), "--limit", "1",
                              "--run-dir", str(tmp_path), "--critique.max_new_tokens", "4",
                              "--critique.critique_max_new_tokens", "4"])
    assert main_critique(args) == 0
    rows = read_critiques(tmp_path / "critique.jsonl")
    out = capsys.readouterr()
    assert len(rows) == 1 and "of 1 prompts ok" in out.out and "deprecated" not in out.err
    with pytest.raises(UserError, match="unknown preset"):
        main_critique(parser.parse_args(["critique", "--preset", "nope", "--run-dir", str(tmp_path / "x")]))


def test_critique_flags_reach_the_settings(tmp_path, capsys):
    """Every critique key is a `--critique.key VALUE` flag; `--set` still works for a release, with a warning."""
    from negalign.cli import build_parser
    from negalign.cli.rdpo import settings_from_args

    parser = build_parser()
    s = settings_from_args(parser.parse_args([
        "critique", "--critique.preset", "sycophancy", "--critique.temperature", "0.3", "--critique.top_p", "0.5",
        "--critique.system_prompt", "be brief", "--critique.output", "c2.jsonl", "--critique.seed", "7",
        "--critique.principle", "Be honest.", "--critique.prompts_per_write", "3", "--teacher", "http://h:1/v1",
        "--train.tau", "0.2", "--run-dir", str(tmp_path)]))
    c = s.critique
    assert (c.preset, c.temperature, c.top_p, c.system_prompt, c.output, c.seed) == (
        "sycophancy", 0.3, 0.5, "be brief", "c2.jsonl", 7)
    assert c.principle == "Be honest." and c.prompts_per_write == 3 and c.teacher == "http://h:1/v1"
    assert s.cfg.train.tau == 0.2 and s.cfg.run_dir == str(tmp_path)
    assert "deprecated" not in capsys.readouterr().err
    with pytest.raises(UserError, match=r"field 'critique.temperature': expected a number, got 'warm'"):
        settings_from_args(parser.parse_args(["critique", "--critique.temperature", "warm"]))

    s = settings_from_args(parser.parse_args(["critique", "--set", "critique.max_new_tokens=64", "--limit", "2"]))
    assert s.critique.max_new_tokens == 64 and s.critique.limit == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "negalign: warning: --set is deprecated and goes in the next release; write --critique.max_new_tokens 64"]
