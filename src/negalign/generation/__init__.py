"""Chat generation backends: local transformers, vLLM (GPU), OpenAI-compatible servers."""

from negalign.generation.base import ChatGenerator, GenerationConfig

__all__ = ["ChatGenerator", "GenerationConfig"]
