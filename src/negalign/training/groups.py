"""D2O groups: one human negative with its prompt's K anchors, tokenised the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from negalign.base.errors import UserError
from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.data.chat import encode_prompt, encode_response
from negalign.data.records import Example
from negalign.modeling.logprobs import Group
from negalign.objectives.registry import get_objective
from negalign.training.anchors import positive_anchors


@dataclass
class TruncationStats:
    prompts: int = 0
    responses: int = 0
    total_prompts: int = 0
    total_responses: int = 0

    def summary(self) -> str:
        return (f"truncated {self.prompts}/{self.total_prompts} prompts and "
                f"{self.responses}/{self.total_responses} responses to the configured maximum lengths")


@dataclass
class GroupIndex:
    """Which example and which of its negatives a group stands for (its position is its id)."""
    example: int
    negative: int


def group_index(examples: list[Example], max_negatives_per_prompt: int | None = None) -> list[GroupIndex]:
    out = []
    for i, ex in enumerate(examples):
        n = len(ex.negatives) if max_negatives_per_prompt is None else min(len(ex.negatives), max_negatives_per_prompt)
        out.extend(GroupIndex(i, j) for j in range(n))
    return out


@dataclass
class Tokenizer:
    """Caches prompt encodings: every negative of a prompt shares them."""
    tokenizer: object
    max_prompt_tokens: int
    max_response_tokens: int
    stats: TruncationStats = field(default_factory=TruncationStats)
    _prompt_cache: dict = field(default_factory=dict)

    def prompt(self, ex: Example) -> list[int]:
        if ex.id not in self._prompt_cache:
            ids = encode_prompt(self.tokenizer, ex.prompt)
            self.stats.total_prompts += 1
            if len(ids) > self.max_prompt_tokens:  # keep the end: the question and the assistant header
                ids = ids[-self.max_prompt_tokens:]
                self.stats.prompts += 1
            self._prompt_cache[ex.id] = ids
        return self._prompt_cache[ex.id]

    def response(self, text: str) -> list[int]:
        ids, truncated = encode_response(self.tokenizer, text, self.max_response_tokens)
        self.stats.total_responses += 1
        self.stats.responses += int(truncated)
        return ids


def build_groups(tok: Tokenizer, examples: list[Example], index: list[GroupIndex],
                 anchors: dict[str, list[str]]) -> list[Group]:
    """Responses of each group: its prompt's anchors first, the human negative last."""
    groups = []
    for gi in index:
        ex = examples[gi.example]
        responses = [tok.response(a) for a in anchors.get(ex.id, [])]
        responses.append(tok.response(ex.negatives[gi.negative]))
        groups.append(Group(prompt_ids=tok.prompt(ex), response_ids=responses))
    return groups


def training_groups(cfg: Config, tokenizer, examples: list[Example], anchors: dict[str, list[str]], *, log=print):
    """(groups, their index, K, truncation stats) of a run: the anchors its method uses, tokenised.

    Hold groups (data.hold) follow the negative groups; the index covers the negative groups only."""
    objective = get_objective(cfg.train.method)
    if cfg.data.anchors == "positives":
        anchors = positive_anchors(cfg, examples)
    index = group_index(examples, cfg.data.max_negatives_per_prompt)
    use = anchors if objective.needs_anchors else {}
    if objective.needs_anchors and cfg.sample.k > 0:
        missing = [ex.id for ex in examples if ex.id not in use]
        if missing:
            raise UserError(f"{len(missing)} prompts have no anchors yet; run `negalign sample` first",
                            path=str(RunDir(cfg.run_dir).anchors))
    tok = Tokenizer(tokenizer, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    groups = build_groups(tok, examples, index, use)
    if objective.needs_anchors:
        from negalign.training.hold import append_hold_groups

        append_hold_groups(cfg, tok, groups, log=log)  # after the negative groups; `index` covers only those
    if tok.stats.prompts or tok.stats.responses:
        log(f"data: {tok.stats.summary()}")
    k = cfg.sample.k if objective.needs_anchors else 0
    return groups, index, k, tok.stats
