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
the batch and the next prompt's rows take its place (continuous batching). Caches stay between
calls: a prompt that extends what a sequence held after the last call (a chat's next turn, as in a
teacher's answer -> critique -> revision) prefills only its new tokens.
Prefill is most of a CPU teacher's time (each turn re-reads the conversation), so this is the
backend's main saving there. The cached prefix was computed in other batches than a fresh prefill
would use, so logits agree up to float rounding (greedy replies can part at a near tie).
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


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def uses_extra_buffers(flags: set[str]) -> bool:
    """Whether llama.cpp may move weights into its extra buffer types (the AMX and repacked layouts).
    Not on a CPU with AMX: llama.cpp's AMX matmul crashed (segfault) in the first decode on a 2-core
    Sapphire Rapids VM, for the 135M's Q8_0 and the 1.5B's Q4_K_M alike (llama.cpp issue 20824);
    without the extra buffers the same build runs there."""
    return not flags & {"amx_int8", "amx_tile", "amx_bf16"}


def model_params(L):
    """llama.cpp's default model parameters, with the extra buffers off where they crash."""
    params = L.llama_model_default_params()
    params.use_extra_bufts = uses_extra_buffers(cpu_flags())
    return params


def runnable_gguf(path: Path, threads: int = 1) -> Path:
    """The file llama.cpp runs for a GGUF file: for the bundled 135M model's a Q8_0 copy, written once
    into the cache (about 2 s), for any other the file itself."""
    from negalign.modeling.loading import cache_dir, default_gguf_path

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
        source = gguf_file(model)
        self.path = runnable_gguf(source, self.threads)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(str(source))
        self.batch_size = batch_size
        self.prefill_tokens = prefill_tokens
        self.last_stats = GenerationStats()
        self.L.llama_backend_init()
        self._model = self.L.llama_model_load_from_file(str(self.path).encode(), model_params(self.L))
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
        prompts = [encode_prompt(self.tokenizer, conv) for conv in conversations]
        greedy = config.temperature == 0
        runs = 1 if greedy else config.n  # greedy samples of one prompt are identical
        base_seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [(i, j) for i in order for j in range(runs)]
        self.last_reused_tokens = 0
        texts, n_tokens = self._decode(prompts, rows, runs, greedy, config, base_seed)
        replies: list[list[str]] = [[""] * runs for _ in prompts]
        for (i, j), text in zip(rows, texts):
            replies[i][j] = text
        self.last_stats = GenerationStats(tokens=n_tokens, seconds=time.perf_counter() - start,
                                          sequences=len(rows), prompt_tokens=sum(map(len, prompts)))
        return [r * config.n for r in replies] if greedy else replies

    def next_token_logits(self, conversations: list[Messages]) -> torch.Tensor:
        """[conversations, vocab] logits of the token after each rendered prompt (cached prefixes reused)."""
        prompts = [encode_prompt(self.tokenizer, conv) for conv in conversations]
        ctx = self._context(len(prompts), max(map(len, prompts)) + 1)
        self.last_reused_tokens = 0
        free, entries, first = set(range(self._ctx_rows)), [], []
        for ids in prompts:
            seqs, prefill = self._admit(ctx, ids, 1, free)
            entries += prefill
            first.append(seqs[0])
        logits = self._run(ctx, entries)
        return torch.stack([logits[s] for s in first])

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

    def _admit(self, ctx, ids: list[int], n: int, free: set[int]) -> tuple[list[int], list[tuple]]:
        """Take `n` free sequences for a prompt; returns them and the prefill entries of the first.

        The first is the free sequence whose cache shares the longest prefix with the prompt (a chat's
        next turn finds its conversation so far; prompts with one system turn share that), and only the
        rest of the prompt is prefilled. The others are the free sequences holding the least; they get a
        copy of the first's cache once it is prefilled (`_copy_prompt`)."""
        L, memory = self.L, self.L.llama_get_memory(ctx)
        keep, first = max((_common_prefix(self._cached.get(s, ()), ids), -s) for s in free)
        first = -first
        keep = min(keep, len(ids) - 1)  # the last prompt token is decoded again for its logits
        free.discard(first)
        others = sorted(free, key=lambda s: (len(self._cached.get(s, ())), s))[:n - 1]
        free.difference_update(others)
        L.llama_memory_seq_rm(memory, first, keep, -1)  # drop what the new prompt does not share
        self.last_reused_tokens += keep
        for s in [first, *others]:
            self._cached[s] = ids
        return [first, *others], [(ids[p], p, first, p == len(ids) - 1) for p in range(keep, len(ids))]

    def _copy_prompt(self, ctx, seqs: list[int]) -> None:
        memory = self.L.llama_get_memory(ctx)
        for s in seqs[1:]:
            self.L.llama_memory_seq_rm(memory, s, -1, -1)
            self.L.llama_memory_seq_cp(memory, seqs[0], s, -1, -1)

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

    def _decode(self, prompts: list[list[int]], rows: list[tuple[int, int]], runs: int, greedy: bool,
                config: GenerationConfig, base_seed: int) -> tuple[list[str], int]:
        """Decode `rows` ((prompt, sample index), each prompt's `runs` rows together), at most batch_size at a
        time, continuously: when rows finish, the next prompts' rows take their sequences and are prefilled in
        the same llama.cpp batch as the others' next tokens, so the batch stays full until the queue is empty.

        On llama.cpp's 8-bit matmul paths a row's logits did not depend on the other rows of its batch
        (tested on the 135M's Q4_1 and Q8_0 files; on an F16 file they did), and its Gumbel noise comes from
        its own generator, so a sample depends on its seed, prompt and index only, not on when it was admitted."""
        slots = max(min(self.batch_size, len(rows)), runs)
        ctx = self._context(slots, max(map(len, prompts)) + config.max_new_tokens)
        sampler = None
        if not greedy:
            sampler = GumbelSampler([sample_seed(base_seed, prompts[i], j) for i, j in rows], config.temperature,
                                    config.top_p)
        stop = set(self.stop_ids)
        free = set(range(self._ctx_rows))
        pending = list(range(len(rows) - runs, -1, -runs))  # first row of each prompt, popped from the end
        seq, position = [-1] * len(rows), [0] * len(rows)
        generated: list[list[int]] = [[] for _ in rows]
        decoding: list[tuple[int, int]] = []  # (row, its last drawn token, to be decoded next)
        while pending or decoding:
            entries = [(t, position[r], seq[r], True) for r, t in decoding]
            admitted = []
            while pending and len(decoding) + runs * (len(admitted) + 1) <= slots:
                r0 = pending.pop()
                ids = prompts[rows[r0][0]]
                seqs, prefill = self._admit(ctx, ids, runs, free)
                entries += prefill
                for k, s in enumerate(seqs):
                    seq[r0 + k], position[r0 + k] = s, len(ids)
                admitted.append(r0)
            logits = self._run(ctx, entries)
            for r0 in admitted:
                self._copy_prompt(ctx, seq[r0:r0 + runs])
            for r, _ in decoding:
                position[r] += 1
            # (row, the sequence whose logits it draws from): an admitted prompt's rows all start from the
            # logits of its prefilled (first) sequence
            sources = [(r, seq[r]) for r, _ in decoding] + [(r0 + k, seq[r0]) for r0 in admitted for k in range(runs)]
            live = [r for r, _ in sources]
            scores = torch.stack([logits[s] for _, s in sources])
            tokens = (scores if sampler is None else sampler(None, scores, live)).argmax(-1).tolist()
            decoding = []
            for r, t in zip(live, tokens):
                generated[r].append(t)
                if t in stop or len(generated[r]) == config.max_new_tokens:
                    # the sequence now holds the prompt and every reply token but the last (never decoded)
                    self._cached[seq[r]] = prompts[rows[r][0]] + generated[r][:-1]
                    free.add(seq[r])
                else:
                    decoding.append((r, t))
        return decode_replies(self.tokenizer, generated, self.stop_ids)


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
