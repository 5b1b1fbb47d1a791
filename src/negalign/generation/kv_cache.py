"""A KV cache written in place, for our decode loop.

transformers' DynamicLayer grows by `torch.cat` at every step: each step copies the whole cache of
every layer (on the 135M model at batch 32 that was 18 % of a sampling step on CPU). Here each
layer's keys and values live in a buffer sized for the prompt plus the token budget, a step writes
its one column, and attention reads a view of the filled part. The values attention sees are the
same; only the copying is gone.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's cache in a [batch, heads, capacity, head_dim] buffer; `keys`/`values` are views of
    its first `length` positions, so everything that reads a DynamicLayer reads this one."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        batch, heads, length, dim = keys.shape
        self._k = keys.new_empty((batch, heads, max(capacity, length), dim))
        self._v = values.new_empty((batch, heads, max(capacity, length), values.shape[-1]))
        self._k[:, :, :length].copy_(keys)
        self._v[:, :, :length].copy_(values)
        self.length = length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._k[:, :, :self.length]
        self.values = self._v[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if self.length + n > self._k.shape[2]:  # past the budget (a caller that decodes longer): grow once
            self._k, self._v = _grown(self._k, self.length + n), _grown(self._v, self.length + n)
        self._k[:, :, self.length:self.length + n].copy_(key_states)
        self._v[:, :, self.length:self.length + n].copy_(value_states)
        self.length += n
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` (finished rows leave the batch)."""
        self._k = self._k.index_select(0, indices)
        self._v = self._v.index_select(0, indices)
        self._refresh_views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self.length = max(0, self.length + tokens_to_remove)
            self._refresh_views()
        else:
            super().crop(tokens_to_remove)

    def reset(self) -> None:
        self.length = 0
        self._refresh_views()


def _grown(buffer: torch.Tensor, needed: int) -> torch.Tensor:
    bigger = buffer.new_empty((*buffer.shape[:2], max(needed, 2 * buffer.shape[2]), buffer.shape[3]))
    bigger[:, :, :buffer.shape[2]].copy_(buffer)
    return bigger


def preallocate(cache, rows: torch.Tensor, extra_tokens: int) -> None:
    """Turn a prefilled cache's plain layers into PreallocatedLayers holding `rows` of the batch (in
    that order, repeats allowed: a prompt's cache copied to its samples) with room for
    `extra_tokens` more positions. Other layer kinds (sliding windows) only select their rows."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = PreallocatedLayer(layer.keys.index_select(0, rows), layer.values.index_select(0, rows),
                                                layer.keys.shape[-2] + extra_tokens)
        else:
            layer.batch_select_indices(rows)
