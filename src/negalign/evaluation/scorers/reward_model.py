"""Any transformers sequence-classification model folder as a reward model.

Scale: the model's raw logit for the (prompt, response) pair (higher = better by that RM; not
bounded, not comparable across RMs). For a 2-label head, the logit of label 1, the class that
binary preference or "good answer" heads put on the positive side.

Input format: the RM's own chat template when its tokenizer has one (the prompt conversation
plus the response as an assistant turn), else "prompt\\n\\nresponse". Long inputs are truncated
from the left of the prompt side by the tokenizer's own truncation, keeping the response end.
"""

from __future__ import annotations

from pathlib import Path

import torch

from negalign.base.errors import UserError
from negalign.data.records import Messages, normalize_prompt


def _plain_prompt(prompt: Messages) -> str:
    return "\n\n".join(m["content"] for m in prompt if m["role"] != "system")


class RewardModelScorer:
    """score(prompts, responses) -> the RM's logit per pair (see module docstring)."""

    def __init__(self, path: str, *, batch_size: int = 16, device: str = "cpu",
                 max_length: int = 2048, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = Path(path).expanduser()
        if not p.is_dir():
            raise UserError("reward model folder does not exist", path=str(p))
        if not (p / "config.json").exists():
            raise UserError("reward model folder has no config.json", path=str(p))
        if not any(p.glob("*.safetensors")):
            raise UserError("reward model folder has no .safetensors weights "
                            "(pickle checkpoints are refused)", path=str(p))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(p), use_safetensors=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load reward model: {str(e).splitlines()[0][:200]}", path=str(p)) from None
        n_labels = self.model.config.num_labels
        if n_labels not in (1, 2):
            raise UserError(f"reward model has {n_labels} labels; expected a 1-logit or 2-label head",
                            path=str(p), field="num_labels")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Sequence classifiers pool the last non-pad token; they must know the pad id.
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"  # keep the response, which is what is rated
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = f"reward_model:{p.name}"

    def format(self, prompt: str | Messages, response: str) -> str:
        messages = normalize_prompt(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False)
        return f"{_plain_prompt(messages)}\n\n{response}"

    @torch.inference_mode()
    def score(self, prompts: list[str | Messages], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        texts = [self.format(p, r) for p, r in zip(prompts, responses)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length,
                                   add_special_tokens=not getattr(self.tokenizer, "chat_template", None))
            logits = self.model(**batch.to(self.device)).logits.float()
            out.extend(logits[:, -1].tolist())  # 1-logit head: its value; 2 labels: label 1
        return out
