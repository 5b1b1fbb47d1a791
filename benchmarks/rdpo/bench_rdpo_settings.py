"""The rDPO benchmark's settings, shared by its stages (so a critique run alone makes the same file)."""

from __future__ import annotations

from pathlib import Path

TEACHER = "qwen2.5-coder-1.5b"
PAIR_SCORER = "judge"        # the offline Qwen2.5-Coder-1.5B verdict judge, P(harmful): lower = better
TAU = 0.1
# answer and revision, critique: the teacher's budget; replies are cut there, so train on as much
ANSWER_TOKENS, CRITIQUE_TOKENS = 80, 48
TEACHER_BATCH = 32


def settings_for(out, variant: str, seed: int, *, epochs: int = 2, lr: float = 2e-5, prompts: int | None = None):
    from negalign.recipes.rdpo import rdpo_settings_from_dict

    out = Path(out)
    return rdpo_settings_from_dict({
        "run_dir": str(out / f"{variant}_s{seed}"),
        "model": {"name": "default"},
        "data": {"max_prompt_tokens": 256, "max_response_tokens": ANSWER_TOKENS + 8},
        "train": {"tau": TAU, "epochs": epochs, "groups_per_step": 8, "micro_groups": 4, "lr": lr, "seed": seed,
                  "beta": 0.1, "precision": "bf16", "save_every": 0, "warmup_ratio": 0.1},
        "critique": {"preset": "safety", "limit": prompts, "teacher": {"backend": "transformers", "model": TEACHER,
                                                     "batch_size": TEACHER_BATCH},
                     "max_new_tokens": ANSWER_TOKENS, "critique_max_new_tokens": CRITIQUE_TOKENS,
                     "prompts_per_write": TEACHER_BATCH, "precision": "bf16",
                     "output": str((out / "critique.jsonl").resolve())},
        "rdpo": {"variant": variant, "scorer": PAIR_SCORER, "filter_not_better": False, "cdpo_epsilon": 0.1},
    })
