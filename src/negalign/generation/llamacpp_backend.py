"""Generation with llama.cpp on a GGUF file: its quantised CPU kernels, our prompts and our sampling.

Why: on a CPU without fast bf16 the transformers backend runs the 1.5B teacher in fp32 on weights
dequantised from the 4-bit GGUF; llama.cpp computes on the 4-bit weights directly. It is reached
through llama-cpp-python's C API (`pip install 'negalign[llamacpp]'`, a compile of 6.5 minutes on 2 cores),
imported only when this backend is used.

What stays ours: prompts are rendered by the model's chat template (the tokenizer read from the same
GGUF) and passed as token ids, so llama.cpp sees exactly the prompt scoring and training see; and
tokens are drawn by the transformers backend's seeded Gumbel sampler from llama.cpp's logits, so a
sample depends on the seed, its prompt and its index only, as there. The logits themselves differ
slightly from a transformers model dequantised from the same file (llama.cpp quantises activations
to 8 bits inside its matmuls), so the two backends draw different samples from nearly the same model.
The bundled 135M model runs from a Q8_0 copy of its Q4_1 file, written once into the cache: on a
2-core AVX2 CPU it decodes 32 rows 1.23x faster (148 vs 120 tokens/s) and stays as close to the
transformers model (first-token KL 0.004-0.012 nats against 0.003-0.010). An F16 copy was faster
still (161) and closer (KL 3e-5 - 2e-4), but its logits for a row changed with the other rows of
the batch (by up to 0.03), which would break "a sample depends on its seed, prompt and index only";
the 8-bit paths do not. The 1.5B's Q4_K_M runs as it is (its F16 copy was slower, 12.3 vs 14.7
tokens/s).

Batching: rows (prompt, sample index) are decoded together, one llama.cpp sequence each; each
distinct prompt is prefilled once and its KV cache copied to its other rows; a finished row leaves
the batch. Caches stay between calls: a prompt that extends what a sequence held after the last call
(a chat's next turn, as in a teacher's answer -> critique -> revision) prefills only its new tokens.
Prefill is most of a CPU teacher's time (each turn re-reads the conversation), so this is the
backend's main saving there. The cached prefix was computed in other batches than a fresh prefill
would use, so logits agree up to float rounding, as across batchings in the transformers backend.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from negalign.base.errors import UserError
from negalign.data.chat import encode_prompt, end_of_turn_id
from negalign.data.records import Messages
from negalign.generation.base import GenerationConfig, check_config
from negalign.generation.transformers_backend import GenerationStats, GumbelSampler, decode_replies, sample_seed


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


log = logging.getLogger("negalign.generation.llamacpp")
_LOG_HOOK = []  # the ctypes callback must outlive every call into the library


def _llama():
    if not llamacpp_available():
        raise UserError("the llamacpp backend needs llama-cpp-python: pip install 'negalign[llamacpp]' "
                        "(or `make setup-llamacpp`)", field="backend")
    from llama_cpp import llama_cpp

    if not _LOG_HOOK:
        # llama.cpp logs every tensor it loads; pass on its errors only. (llama-cpp-python's own hook
        # maps ggml's current levels one off and prints warnings as errors.)
        @llama_cpp.llama_log_callback
        def hook(level, text, user_data):
            if level == 4:  # GGML_LOG_LEVEL_ERROR
                log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

        _LOG_HOOK.append(hook)
        llama_cpp.llama_log_set(hook, None)
    return llama_cpp


def runnable_gguf(spec: str, threads: int = 1) -> Path:
    """The file llama.cpp runs for a model spec: for the bundled 135M model a Q8_0 copy of its GGUF,
    written once into the cache (about 2 s), for anything else the GGUF file itself."""
    from negalign.modeling.loading import cache_dir, default_gguf_path, gguf_file

    path = gguf_file(spec)
    if path != default_gguf_path():
        return path
    target = cache_dir() / "models" / (path.stem.split(".")[0] + ".Q8_0.gguf")
    if target.exists():
        return target
    L = _llama()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    params = L.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = L.LLAMA_FTYPE_MOSTLY_Q8_0, True, threads
    try:
        if L.llama_model_quantize(str(path).encode(), str(tmp).encode(), params) != 0:
            raise UserError(f"llama.cpp could not write a Q8_0 copy to {tmp}", path=str(path))
        os.replace(tmp, target)  # another process may have written it meanwhile: same bytes
    finally:
        tmp.unlink(missing_ok=True)
    return target


class LlamaCppGenerator:
    """ChatGenerator on a GGUF model run by llama.cpp. `model`: "default", "qwen2.5-coder-1.5b" or a .gguf path.

    batch_size: sequences decoded together. threads: CPU threads (default: torch's count).
    prefill_tokens: prompt tokens per llama.cpp batch while prefilling. context_per_row: tokens of KV
    cache per sequence at least; a call that needs more grows it (the longest prompt plus max_new_tokens),
    moving the cached conversations into the larger cache. After each call,
    `last_stats` holds the generated token count and wall time.
    """

    def __init__(self, model: str = "default", *, batch_size: int = 16, threads: int | None = None,
                 prefill_tokens: int = 512, context_per_row: int = 256, tokenizer=None):
        from negalign.modeling.loading import gguf_file, load_tokenizer

        for field, v in (("batch_size", batch_size), ("prefill_tokens", prefill_tokens),
                         ("context_per_row", context_per_row)):
            if not isinstance(v, int) or v < 1:
                raise UserError(f"must be a positive integer, got {v!r}", field=field)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UserError(f"must be a positive integer, got {threads!r}", field="threads")
        self.L = _llama()
        self.threads = threads or torch.get_num_threads()
        self.path = runnable_gguf(model, self.threads)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(str(gguf_file(model)))
        self.batch_size = batch_size
        self.prefill_tokens = prefill_tokens
        self.last_stats = GenerationStats()
        self.L.llama_backend_init()
        self._model = self.L.llama_model_load_from_file(str(self.path).encode(), self.L.llama_model_default_params())
        if not self._model:
            raise UserError("llama.cpp cannot load this file", path=str(self.path))
        vocab = self.L.llama_model_get_vocab(self._model)
        self.vocab_size = self.L.llama_vocab_n_tokens(vocab)
        # the chat template's end of turn, plus every special token llama.cpp counts as an end of generation
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        stops = {end_of_turn_id(self.tokenizer)} | {t for t in special if self.L.llama_vocab_is_eog(vocab, t)}
        self.stop_ids = sorted(stops)
        self.context_per_row = context_per_row
        self.last_reused_tokens = 0  # prompt tokens the last call found in the cache
        self._ctx, self._ctx_rows, self._ctx_per_row = None, 0, 0
        self._cached: dict[int, list[int]] = {}  # sequence -> the tokens its cache holds

    def __repr__(self) -> str:
        return f"LlamaCppGenerator(model={str(self.path)!r}, batch_size={self.batch_size})"

    def __del__(self):
        try:
            if getattr(self, "_ctx", None):
                self.L.llama_free(self._ctx)
            if getattr(self, "_model", None):
                self.L.llama_model_free(self._model)
        except (TypeError, AttributeError):  # at interpreter exit the library may already be unloaded
            pass
        self._ctx = self._model = None

    def generate(self, conversations: list[Messages], config: GenerationConfig) -> list[list[str]]:
        check_config(config)
        start = time.perf_counter()
        stats = GenerationStats()
        prompts = [encode_prompt(self.tokenizer, conv) for conv in conversations]
        stats.prompt_tokens = sum(map(len, prompts))
        greedy = config.temperature == 0
        runs = 1 if greedy else config.n  # greedy samples of one prompt are identical
        base_seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [(i, j) for i in order for j in range(runs)]
        replies: list[list[str]] = [[""] * runs for _ in prompts]
        self.last_reused_tokens = 0
        for lo in range(0, len(rows), self.batch_size):
            chunk = rows[lo:lo + self.batch_size]
            texts, n_tokens = self._decode([prompts[i] for i, _ in chunk], [j for _, j in chunk], greedy,
                                           config, base_seed)
            for (i, j), text in zip(chunk, texts):
                replies[i][j] = text
            stats.tokens += n_tokens
            stats.sequences += len(chunk)
        stats.seconds = time.perf_counter() - start
        self.last_stats = stats
        return [r * config.n for r in replies] if greedy else replies

    # ------------------------------------------------------------------ llama.cpp

    def _context(self, rows: int, per_row: int):
        """A context with at least `rows` sequences of `per_row` tokens each. An existing one is kept while
        it is large enough; a larger one takes over the sequences cached by the last call (a teacher's
        conversation keeps its prefix when its next turn needs more room)."""
        L = self.L
        per_row = -(-max(per_row, self.context_per_row) // 256) * 256  # llama.cpp pads a row's share to 256
        if self._ctx is not None and rows <= self._ctx_rows and per_row <= self._ctx_per_row:
            return self._ctx
        saved = self._save_cached()
        if self._ctx is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        rows, per_row = max(rows, self._ctx_rows), max(per_row, self._ctx_per_row)
        params = L.llama_context_default_params()
        params.n_ctx = rows * per_row
        params.n_seq_max = rows
        params.n_batch = params.n_ubatch = max(self.prefill_tokens, rows)
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False  # a stream per sequence: attention reads only that row's cache
        self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise UserError(f"llama.cpp could not allocate a context of {rows} x {per_row} tokens "
                            "(lower batch_size or max_new_tokens)", path=str(self.path))
        self._ctx_rows, self._ctx_per_row = rows, per_row
        self._cached = {}
        for seq, (tokens, state) in saved.items():
            if L.llama_state_seq_set_data(self._ctx, state, len(state), seq):  # 0: not restored
                self._cached[seq] = tokens
        return self._ctx

    def _save_cached(self) -> dict[int, tuple[list[int], ctypes.Array]]:
        """The KV state of every sequence the last call left in the cache, with its tokens."""
        L, saved = self.L, {}
        for seq, tokens in self._cached.items():
            size = L.llama_state_seq_get_size(self._ctx, seq)
            state = (ctypes.c_uint8 * size)()
            if size and L.llama_state_seq_get_data(self._ctx, state, size, seq) == size:
                saved[seq] = (tokens, state)
        return saved

    def _assign(self, prompts: list[list[int]]) -> tuple[list[int], dict[int, int]]:
        """A llama.cpp sequence per row, and for each row that prefills its prompt the number of prompt
        tokens already in that sequence's cache.

        The rows of one prompt share its prefill: the first row prefills, the others copy its cache. A
        prompt that extends what a sequence holds from the last call (a chat's next turn: the last
        prompt, the reply, a new message) takes that sequence and prefills only the new tokens.
        """
        free = set(range(self._ctx_rows))
        seq: list[int] = [-1] * len(prompts)
        reuse: dict[int, int] = {}  # prefilling row -> cached tokens it keeps
        first: dict[int, int] = {}
        for r, ids in enumerate(prompts):
            if id(ids) in first:
                continue
            first[id(ids)] = r
            best, keep = None, 0
            for s in free:
                n = _common_prefix(self._cached.get(s, ()), ids)
                if n > keep or best is None:
                    best, keep = s, n
            seq[r] = best
            free.discard(best)
            reuse[r] = min(keep, len(ids) - 1)  # the last prompt token is decoded again for its logits
        for r in range(len(prompts)):
            if seq[r] < 0:
                seq[r] = min(free)
                free.discard(seq[r])
        return seq, reuse

    def _run(self, ctx, entries: list[tuple[int, int, int, bool]]) -> dict[int, torch.Tensor]:
        """Decode (token, position, sequence, wants_logits) entries in batches of at most
        `n_batch` tokens; returns the logits of the entries that want them, keyed by sequence."""
        L = self.L
        capacity = L.llama_n_batch(ctx)
        out: dict[int, torch.Tensor] = {}
        batch = L.llama_batch_init(capacity, 0, 1)
        try:
            for lo in range(0, len(entries), capacity):
                part = entries[lo:lo + capacity]
                for k, (token, pos, seq, wants) in enumerate(part):
                    batch.token[k], batch.pos[k] = token, pos
                    batch.n_seq_id[k], batch.seq_id[k][0], batch.logits[k] = 1, seq, wants
                batch.n_tokens = len(part)
                code = L.llama_decode(ctx, batch)
                if code != 0:
                    raise UserError(f"llama_decode failed with code {code} (1: no room in the KV cache)",
                                    path=str(self.path))
                for k, (_, _, seq, wants) in enumerate(part):
                    if wants:
                        row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, k), shape=(self.vocab_size,))
                        out[seq] = torch.from_numpy(row.copy())  # llama.cpp reuses the buffer
        finally:
            L.llama_batch_free(batch)
        return out

    def _prefill(self, ctx, prompts: list[list[int]]) -> tuple[list[int], torch.Tensor]:
        """Each row's sequence and the logits after its prompt: each distinct prompt prefilled once (only
        the tokens its sequence's cache does not hold), its other rows start from a copy of that cache."""
        L = self.L
        memory = L.llama_get_memory(ctx)
        seq, reuse = self._assign(prompts)
        entries = []
        for r, keep in reuse.items():
            L.llama_memory_seq_rm(memory, seq[r], keep, -1)  # drop what the new prompt does not share
            ids = prompts[r]
            entries += [(ids[p], p, seq[r], p == len(ids) - 1) for p in range(keep, len(ids))]
        self.last_reused_tokens += sum(reuse.values())
        logits_by_seq = self._run(ctx, entries)
        source = {id(prompts[r]): seq[r] for r in reuse}
        for r, ids in enumerate(prompts):
            if source[id(ids)] != seq[r]:
                L.llama_memory_seq_cp(memory, source[id(ids)], seq[r], -1, -1)
        return seq, torch.stack([logits_by_seq[source[id(ids)]] for ids in prompts])

    def _decode(self, prompts: list[list[int]], indices: list[int], greedy: bool, config: GenerationConfig,
                base_seed: int) -> tuple[list[str], int]:
        """Decode one batch; row r is sample `indices[r]` of `prompts[r]`, in llama.cpp sequence seq[r]."""
        ctx = self._context(len(prompts), max(map(len, prompts)) + config.max_new_tokens)
        seq, logits = self._prefill(ctx, prompts)
        sampler = None
        if not greedy:
            seeds = [sample_seed(base_seed, ids, j) for ids, j in zip(prompts, indices)]
            sampler = GumbelSampler(seeds, config.temperature, config.top_p)
        stop = set(self.stop_ids)
        live = list(range(len(prompts)))
        position = [len(ids) for ids in prompts]
        generated: list[list[int]] = [[] for _ in prompts]
        for step in range(config.max_new_tokens):
            scores = logits if sampler is None else sampler(None, logits, live)
            tokens = scores.argmax(-1).tolist()
            still = []
            for r, t in zip(live, tokens):
                generated[r].append(t)
                if t not in stop:
                    still.append((r, t))
            if step == config.max_new_tokens - 1 or not still:
                break
            live = [r for r, _ in still]  # a finished row keeps its cache for a next turn
            step_logits = self._run(ctx, [(t, position[r], seq[r], True) for r, t in still])
            for r in live:
                position[r] += 1
            logits = torch.stack([step_logits[seq[r]] for r in live])
        # what each sequence's cache now holds: the prompt and every reply token but the last (never decoded)
        self._cached = {seq[r]: prompts[r] + generated[r][:-1] for r in range(len(prompts))}
        return decode_replies(self.tokenizer, generated, self.stop_ids)


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
