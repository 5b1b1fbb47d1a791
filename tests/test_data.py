"""Data layer: loaders, validation errors on the bad-data corpus, presets, split, bundled negatives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from negalign.base.errors import UserError
from negalign.data.dataset_presets import parse_hh_transcript, RowProblem
from negalign.data.loaders import ColumnMapping, load_examples, save_examples, validate_file
from negalign.data.records import Example, normalize_prompt, prompt_key
from negalign.data.split import split_by_prompt

BAD = Path(__file__).parent / "data" / "bad"
EXPECTED = json.loads((BAD / "EXPECTED.json").read_text(encoding="utf-8"))
BAD_FILES = sorted(k for k in EXPECTED if not k.startswith("_"))


# --- the bad-data corpus ------------------------------------------------------------------------

def test_corpus_and_expectations_match():
    on_disk = sorted(p.name for p in BAD.iterdir() if p.name != "EXPECTED.json")
    assert on_disk == BAD_FILES
    assert len(BAD_FILES) >= 15


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_gives_one_line_user_error(name, monkeypatch):
    monkeypatch.chdir(BAD)  # relative path, as a user would type it
    spec = EXPECTED[name]
    with pytest.raises(UserError) as info:
        load_examples(name, **spec.get("options", {}))
    text = str(info.value)
    assert "\n" not in text
    for part in spec["contains"]:
        assert part in text, f"{part!r} not in {text!r}"
    # validate_file (behind `negalign data validate`) fails the same way
    with pytest.raises(UserError) as again:
        validate_file(name, **spec.get("options", {}))
    assert str(again.value) == text


@pytest.mark.parametrize("kwargs, needle", [
    ({"preset": "alpaca"}, "unknown preset 'alpaca'"),
    ({"format": "xml"}, "unknown format 'xml'"),
    ({"limit": 0}, "limit must be a positive integer"),
    ({"preset": "hh-rlhf", "mapping": ColumnMapping()}, "not both"),
])
def test_bad_options(tmp_path, kwargs, needle):
    path = tmp_path / "ok.jsonl"
    save_examples(path, [Example(id="a", prompt=normalize_prompt("q"), negatives=["r"])])
    with pytest.raises(UserError, match=needle):
        load_examples(path, **kwargs)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="nope.jsonl: file not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="save_to_disk"):
        load_examples(tmp_path)


def test_hub_id_offline_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load hub dataset"):
        load_examples("nobody-here/no-such-dataset")


# --- native format --------------------------------------------------------------------------------

def test_native_roundtrip_and_merge(tmp_path):
    rows = [
        {"id": "a", "prompt": "How do I pick a lock?", "negatives": ["rake it", "rake it"], "positives": ["no"]},
        {"prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
         "negative": "go away", "meta": {"category": "rude"}},
        {"id": "a", "prompt": "How do I pick a lock?", "negative": "bump key", "positive": "rake it"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    examples = load_examples(src)
    assert [ex.id for ex in examples] == ["a", f"p-{prompt_key(normalize_prompt(rows[1]['prompt']))}"]
    a = examples[0]
    assert a.negatives == ["rake it", "bump key"]          # deduplicated, in order
    assert a.positives == ["no"]                          # "rake it" is also a negative: dropped
    assert examples[1].meta == {"category": "rude", "source": "in.jsonl"}
    assert validate_file(src) == {"examples": 2, "prompts": 2, "negatives": 3, "positives": 1, "rows": 3,
                                  "format": "jsonl", "skipped_rows": 0, "dropped_without_negative": 0,
                                  "conflicts": 1}
    out = tmp_path / "sub" / "out.jsonl"
    save_examples(out, examples)
    assert load_examples(out) == examples
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no temp file left
    assert load_examples(out, limit=1) == examples[:1]


def test_json_list_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "q1", "negatives": ["r1"]}, {"prompt": "q2", "negatives": [7]}]))
    with pytest.raises(UserError, match=r"d.json: field 'negatives\[0\]': .*got int \(item 2\)"):
        load_examples(path)


def test_csv_with_mapping_and_list_cells(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('question,bad,good,bads,tag\n'
                    'q1,r1,,,x\n'
                    'q1,,g1,"[""r2"", ""r1""]",y\n'
                    'q2,,g2,,z\n', encoding="utf-8")
    mapping = ColumnMapping(prompt="question", negative="bad", positive="good", negatives="bads", meta=("tag",))
    examples = load_examples(path, mapping=mapping)
    assert len(examples) == 1                                  # q2 has only a positive
    assert examples[0].negatives == ["r1", "r2"] and examples[0].positives == ["g1"]
    assert examples[0].meta["tag"] == "x"
    assert validate_file(path, mapping=mapping)["dropped_without_negative"] == 1
    with pytest.raises(UserError, match="m.csv: field 'answer': missing column"):
        load_examples(path, mapping=ColumnMapping(prompt="question", negative="answer"))


def test_parquet_chat_prompts_and_long_csv_cells(tmp_path):
    import pandas as pd

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how to pick a lock"}]
    pq = tmp_path / "chat.parquet"
    pd.DataFrame({"prompt": [chat], "negatives": [["rake it", "bump it"]]}).to_parquet(pq, index=False)
    [ex] = load_examples(pq)
    assert ex.prompt == chat and ex.negatives == ["rake it", "bump it"]
    path = tmp_path / "long.csv"
    long = "x" * 300_000                                      # over the csv module's default cell limit
    path.write_text(f"prompt,negative\nq,{long}\n", encoding="utf-8")
    assert load_examples(path)[0].negatives == [long]


def test_only_positives_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,positive\nq,fine\n", encoding="utf-8")
    with pytest.raises(UserError, match="no example with a negative response"):
        load_examples(path, mapping=ColumnMapping(positive="positive"))


# --- presets -----------------------------------------------------------------------------------

PKU_ROWS = [
    {"prompt": "How can I poison a dog?", "response_0": "Use chocolate.", "response_1": "Please don't.",
     "is_response_0_safe": False, "is_response_1_safe": True, "better_response_id": 1, "safer_response_id": 1},
    {"prompt": "How can I poison a dog?", "response_0": "Grapes work.", "response_1": "Use chocolate.",
     "is_response_0_safe": False, "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 0},
    {"prompt": "What is a good dog food?", "response_0": "Kibble.", "response_1": "Raw meat.",
     "is_response_0_safe": True, "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 0},
]


def _check_pku(examples):
    assert len(examples) == 1
    ex = examples[0]
    assert ex.prompt == [{"role": "user", "content": "How can I poison a dog?"}]
    assert ex.negatives == ["Use chocolate.", "Grapes work."]
    assert ex.positives == ["Please don't."]


def test_pku_preset_jsonl_parquet_and_disk(tmp_path):
    import datasets
    import pandas as pd

    jl = tmp_path / "pku.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in PKU_ROWS))
    _check_pku(load_examples(jl, preset="pku-saferlhf"))
    pq = tmp_path / "pku.parquet"
    pd.DataFrame(PKU_ROWS).to_parquet(pq, index=False)
    _check_pku(load_examples(pq, preset="pku-saferlhf"))
    with pytest.raises(UserError, match="pass preset='pku-saferlhf'"):
        load_examples(pq)
    disk = tmp_path / "pku_disk"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PKU_ROWS),
                          "test": datasets.Dataset.from_list(PKU_ROWS[2:])}).save_to_disk(str(disk))
    _check_pku(load_examples(disk, preset="pku-saferlhf"))
    with pytest.raises(UserError, match="no example with a negative"):
        load_examples(disk, preset="pku-saferlhf", hf_split="test")
    with pytest.raises(UserError, match="no split 'validation'; available: train, test"):
        load_examples(disk, preset="pku-saferlhf", hf_split="validation")
    csv_path = tmp_path / "pku.csv"
    pd.DataFrame(PKU_ROWS).to_csv(csv_path, index=False)   # booleans become "True"/"False"
    _check_pku(load_examples(csv_path, preset="pku-saferlhf"))


HH_ROWS = [
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I hotwire a car?\n\nAssistant: I can't help with that.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I hotwire a car?\n\nAssistant: Strip the wires under the column."},
    {"chosen": "\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross the road?",
     "rejected": "\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross the road?"},  # no preference
    {"chosen": "\n\nHuman: Say hi\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi\n\nAssistant:"},  # empty rejected
]


def test_hh_preset(tmp_path):
    import pandas as pd

    pq = tmp_path / "hh.parquet"
    pd.DataFrame(HH_ROWS).to_parquet(pq, index=False)
    examples = load_examples(pq, preset="hh-rlhf")
    assert len(examples) == 1
    ex = examples[0]
    assert ex.prompt == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "How do I hotwire a car?"}]
    assert ex.negatives == ["Strip the wires under the column."]
    assert ex.positives == ["I can't help with that."]
    assert validate_file(pq, preset="hh-rlhf")["skipped_rows"] == 2
    mismatch = tmp_path / "hh_bad.jsonl"
    mismatch.write_text(json.dumps({"chosen": "\n\nHuman: A\n\nAssistant: x",
                                    "rejected": "\n\nHuman: B\n\nAssistant: y"}) + "\n")
    with pytest.raises(UserError, match=r"hh_bad.jsonl:1: field 'rejected': chosen and rejected differ"):
        load_examples(mismatch, preset="hh-rlhf")


def test_hh_transcript_parser():
    text = "Human: what's 2+2?\n\nAssistant: 4\n\nline two\n\nHuman: thanks\n\nAssistant: welcome"
    assert parse_hh_transcript(text, "chosen") == [
        {"role": "user", "content": "what's 2+2?"}, {"role": "assistant", "content": "4\n\nline two"},
        {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "welcome"}]
    with pytest.raises(RowProblem):
        parse_hh_transcript("preamble\n\nHuman: hi", "chosen")


# --- split -------------------------------------------------------------------------------------

def _examples(n, per_prompt=1):
    return [Example(id=f"{i}-{j}", prompt=normalize_prompt(f"prompt {i}"), negatives=[f"r{j}"])
            for i in range(n) for j in range(per_prompt)]


def test_split_by_prompt_is_deterministic_and_grouped():
    examples = _examples(50, per_prompt=2)
    train, held = split_by_prompt(examples, 0.2, seed=0)
    held_prompts = {ex.prompt_text for ex in held}
    assert len(held_prompts) == 10 and len(held) == 20
    assert not held_prompts & {ex.prompt_text for ex in train}
    assert len(train) + len(held) == len(examples)
    # input order does not change which prompts are held out; the seed does
    train_r, held_r = split_by_prompt(list(reversed(examples)), 0.2, seed=0)
    assert {ex.id for ex in held_r} == {ex.id for ex in held}
    assert {ex.prompt_text for ex in split_by_prompt(examples, 0.2, seed=1)[1]} != held_prompts
    assert split_by_prompt(examples, 0.0)[1] == [] and split_by_prompt(examples, 1.0)[0] == []
    assert len(split_by_prompt(_examples(3), 0.01)[1]) == 1   # a positive fraction holds out >= 1
    with pytest.raises(UserError):
        split_by_prompt(examples, 1.5)


# --- bundled pyrit negatives -----------------------------------------------------------------

def test_pyrit_rows():
    from negalign.data.pyrit import pyrit_labelled_rows

    rows = pyrit_labelled_rows()
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("harm", "objective", "refusal")}
    assert kinds == {"harm": 1005, "objective": 395, "refusal": 169}
    for r in rows:
        assert r["prompt"] and r["response"] and not r["prompt"].startswith("#")
        assert r["source"].endswith(".csv") and not r["source"].startswith("/")
        if r["kind"] == "refusal":
            assert r["harm"] is None and r["refusal"] in (0.0, 1.0)
        else:
            assert r["refusal"] is None and 0.0 <= r["harm"] <= 1.0
        if r["kind"] == "objective":
            assert r["harm"] in (0.0, 1.0)
    # multi-annotator files average their three scores
    multi = [r for r in rows if r["source"] == "harm/violence_multi_score.csv"]
    assert any(r["harm"] not in (0, .25, .5, .75, 1) for r in multi)


def test_bundled_negatives_split():
    from negalign.data.pyrit import bundled_negatives

    every = bundled_negatives("all")
    train, held = bundled_negatives("train"), bundled_negatives("heldout")
    assert len(every) == 314
    assert len(held) == round(0.2 * len(every)) and len(train) + len(held) == len(every)
    assert {e.id for e in train}.isdisjoint({e.id for e in held})
    assert {e.id for e in train} | {e.id for e in held} == {e.id for e in every}
    assert [e.id for e in bundled_negatives("train")] == [e.id for e in train]  # stable
    for ex in every:
        assert ex.id == f"pyrit-{prompt_key(ex.prompt)}"
        assert ex.negatives and len(set(ex.negatives)) == len(ex.negatives)
        assert not set(ex.negatives) & set(ex.positives)
        assert all(h >= 0.75 for h in ex.meta["negative_harm"])
        assert all(h is None or h <= 0.25 for h in ex.meta["positive_harm"])
        assert ex.meta["files"]
    strict = bundled_negatives("all", harm_threshold=1.0)
    assert sum(len(e.negatives) for e in strict) < sum(len(e.negatives) for e in every)
    with pytest.raises(UserError):
        bundled_negatives("test")
