"""Generation with vLLM on a CUDA GPU. vllm is imported only when this backend is used.

Prompts are rendered with our own chat template and passed as token ids, so vLLM sees exactly
the prompt that scoring and training see.
"""

from __future__ import annotations

import importlib.util
import time

from negalign.base.errors import UserError
from negalign.data.chat import encode_prompt, end_of_turn_id
from negalign.data.records import Messages
from negalign.generation.base import GenerationConfig, check_config
from negalign.generation.transformers_backend import GenerationStats


def vllm_available() -> bool:
    """True when the vllm package is installed and a CUDA device is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken CUDA setup counts as no GPU
        return False


class VLLMGenerator:
    """ChatGenerator on vllm.LLM. `model_path`: "default", a model folder or a hub id.

    vLLM loads its own copy of the weights from `model_path`: it cannot sample from an
    in-memory (for example, partly trained) model.
    """

    def __init__(self, model_path: str = "default", *, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.85, seed: int = 0, tokenizer=None,
                 max_model_len: int | None = None):
        if not vllm_available():
            raise UserError("the vllm backend needs the vllm package and a CUDA GPU "
                            "(pip install 'negalign[gpu]'); use backend 'transformers' or 'auto'",
                            field="backend")
        from vllm import LLM

        from negalign.modeling.loading import load_tokenizer, resolve_model_path

        self.model_path = resolve_model_path(model_path)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_path)
        kwargs = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = LLM(model=self.model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       seed=seed, **kwargs)
        self.last_stats = GenerationStats()

    def __repr__(self) -> str:
        return f"VLLMGenerator(model_path={self.model_path!r})"

    def sampling_params(self, config: GenerationConfig):
        from vllm import SamplingParams

        greedy = config.temperature == 0
        return SamplingParams(
            n=1 if greedy else config.n,  # greedy samples are identical: decode once
            temperature=config.temperature, top_p=1.0 if greedy else config.top_p,
            max_tokens=config.max_new_tokens, seed=config.seed,
            stop_token_ids=[end_of_turn_id(self.tokenizer)], skip_special_tokens=True)

    def generate(self, conversations: list[Messages], config: GenerationConfig) -> list[list[str]]:
        check_config(config)
        start = time.perf_counter()
        prompts = [{"prompt_token_ids": encode_prompt(self.tokenizer, conv)} for conv in conversations]
        outputs = self.llm.generate(prompts, self.sampling_params(config), use_tqdm=False) if prompts else []
        replies, tokens = [], 0
        for out in outputs:
            texts = [o.text for o in out.outputs]
            tokens += sum(len(o.token_ids) for o in out.outputs)
            replies.append(texts * config.n if config.temperature == 0 else texts)
        self.last_stats = GenerationStats(tokens=tokens, seconds=time.perf_counter() - start,
                                          sequences=sum(len(r) for r in replies))
        return replies
