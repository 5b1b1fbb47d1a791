"""Models: loading (folder, GGUF, hub id, bundled default) and LoRA, sequence log-probs of grouped
responses (per-segment attention, chunked LM head), activation checkpointing, batched inference.

Kept free of imports: `negalign.modeling.lora` is read by the config before torch loads.
"""
