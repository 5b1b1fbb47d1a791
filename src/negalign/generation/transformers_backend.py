"""Local generation with a transformers model: batched across conversations, seeded per sample.

Throughput: each conversation becomes n rows (its samples), rows are sorted by prompt length and
cut into batches of at most `batch_size` sequences (left padded), so one forward pass advances many
samples across conversations and padding waste stays small; a batch also stops growing when its
padded prompt tokens would pass `max_batch_tokens`, so one very long prompt (IFBench has a
2,600-token one) is decoded with few others instead of padding a whole batch to its length. The decode loop is our own, not HF
`generate`: a prompt is prefilled once and its KV cache copied to its n samples (HF prefills each
of the n copies; with a 1.5B teacher and K = 4 that prefill was 80 % of the sampling time), and a
row leaves the batch as soon as it ends its turn (refusals are short).

Determinism: sampling does not use the global RNG. Each sample (prompt, index j) gets its own
noise stream seeded from (config.seed, prompt token ids, j), and a token is drawn with the
Gumbel-max trick (argmax of log-probs plus Gumbel noise, an exact draw from the
temperature / top-p distribution). So a sample depends on the seed and its own prompt only, not
on which other prompts share its batch or on the batch size (up to float rounding of padded
batches). Two identical conversations in one call get identical samples; ask for `n` instead.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from negalign.base.errors import UserError
from negalign.base.progress import Progress
from negalign.data.chat import encode_prompt, end_of_turn_id
from negalign.data.records import Messages
from negalign.generation.base import GenerationConfig, check_config


@dataclass
class GenerationStats:
    tokens: int = 0        # generated tokens, end-of-turn included, padding after it excluded
    seconds: float = 0.0
    sequences: int = 0
    prompt_tokens: int = 0  # tokens of the rendered prompts, each conversation counted once

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def sample_seed(seed: int, prompt_ids: list[int], index: int) -> int:
    """A 63-bit seed for sample `index` of a prompt: stable across machines and batchings."""
    blob = f"{seed}|{index}|{','.join(map(str, prompt_ids))}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def top_p_mask(logits: torch.Tensor, top_p: float, candidates: int = 1024) -> torch.Tensor:
    """Boolean mask of the tokens outside the smallest set whose probability mass reaches top_p.

    A full sort of a 50k vocabulary costs more than a small model's decoding step on CPU, and the
    nucleus is usually a few dozen tokens: look among the top `candidates` first and sort the whole
    vocabulary only for the rows whose nucleus is larger (sorting every row when one of 64 needed it
    took a third of the sampler's time on the 135M model).
    """
    probs = torch.softmax(logits, dim=-1)
    if candidates >= probs.shape[-1]:
        return _drop_outside_nucleus(*torch.sort(probs, dim=-1, descending=True), top_p, probs.shape)
    top, order = torch.topk(probs, candidates, dim=-1)
    mask = _drop_outside_nucleus(top, order, top_p, probs.shape)
    wide = (top.sum(-1) < top_p).nonzero().squeeze(1)
    if len(wide):
        rows = probs[wide]
        mask[wide] = _drop_outside_nucleus(*torch.sort(rows, dim=-1, descending=True), top_p, rows.shape)
    return mask


def _drop_outside_nucleus(sorted_probs, order, top_p, shape) -> torch.Tensor:
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop = mass_before >= top_p  # the most likely token has mass_before = 0: never dropped
    mask = torch.ones(shape, dtype=torch.bool, device=sorted_probs.device)
    return mask.scatter(-1, order, drop)


class GumbelSampler:
    """A logits processor that turns greedy decoding into seeded sampling, one RNG per row.

    argmax(logits / T + Gumbel noise) is an exact draw from softmax(logits / T); restricting to
    the top-p set first gives nucleus sampling. With top-p, noise is drawn for the nucleus only (its
    tokens in id order), not the whole vocabulary: over the 1.5B teacher's 152k tokens the full draw
    was ~10 % of a decoding step. Rows never share noise, so a row's draws depend only on its own
    seed and step.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor,
                 rows: list[int] | None = None) -> torch.Tensor:
        """Noised logits (-inf outside the nucleus); row r of `scores` uses generator `rows[r]`
        (default: generator r)."""
        generators = self.generators if rows is None else [self.generators[r] for r in rows]
        logits = scores.float() / self.temperature
        if self.top_p >= 1.0:
            vocab = logits.shape[-1]
            uniform = torch.stack([torch.rand(vocab, generator=g) for g in generators]).to(logits.device)
            return logits + _gumbel(uniform)
        keep = ~top_p_mask(logits, self.top_p)
        noised = torch.full_like(logits, float("-inf"))
        for r, g in enumerate(generators):
            idx = keep[r].nonzero().squeeze(1)
            uniform = torch.rand(len(idx), generator=g).to(logits.device)
            noised[r, idx] = logits[r, idx] + _gumbel(uniform)
        return noised


def _gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniform draws (clamped away from 0 and 1)."""
    return -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))


class TransformersGenerator:
    """ChatGenerator over a loaded transformers causal LM (plain or PEFT-wrapped).

    batch_size: sequences per batch (prompts per batch = batch_size // n, at least one).
    max_batch_tokens: cap on a batch's distinct prompts x padded width (a longer prompt goes alone). progress: show progress with tokens/s (negalign.base.progress). After each call, `last_stats` holds
    the generated token count and wall time.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, max_batch_tokens: int = 8192,
                 progress: bool = False):
        for field, v in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
            if not isinstance(v, int) or v < 1:
                raise UserError(f"must be a positive integer, got {v!r}", field=field)
        self.max_batch_tokens = max_batch_tokens
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.last_stats = GenerationStats()
        self.stop_ids = self._stop_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", "") or type(self.model).__name__
        return f"TransformersGenerator(model={name!r}, batch_size={self.batch_size})"

    def _stop_ids(self) -> list[int]:
        ids = [end_of_turn_id(self.tokenizer)]
        extra = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for i in extra if isinstance(extra, (list, tuple)) else [extra]:
            if i is not None and i not in ids:
                ids.append(int(i))
        return ids

    def generate(self, conversations: list[Messages], config: GenerationConfig) -> list[list[str]]:
        check_config(config)
        start = time.perf_counter()
        stats = GenerationStats()
        if not conversations:
            self.last_stats = stats
            return []
        prompts = [encode_prompt(self.tokenizer, conv) for conv in conversations]
        stats.prompt_tokens = sum(map(len, prompts))
        greedy = config.temperature == 0
        # Greedy samples of one prompt are identical: decode once, copy n times.
        runs = 1 if greedy else config.n
        base_seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()).item())
        # One row per (prompt, sample): rows sorted by prompt length, so the samples of a prompt sit
        # together and each call pads little. Expanding rows ourselves is what
        # num_return_sequences does inside HF, and lets n exceed batch_size.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [(i, j) for i in order for j in range(runs)]
        replies: list[list[str]] = [[""] * runs for _ in prompts]
        bar = self._progress_bar(len(rows))
        with _generation_mode(self.model):
            for chunk in self._batches(rows, [len(p) for p in prompts]):
                texts, n_tokens = self._generate_rows([prompts[i] for i, _ in chunk],
                                                      [j for _, j in chunk], greedy, config, base_seed)
                for (i, j), text in zip(chunk, texts):
                    replies[i][j] = text
                stats.tokens += n_tokens
                stats.sequences += len(chunk)
                if bar is not None:
                    bar.update(len(chunk), tokens=n_tokens)
        if bar is not None:
            bar.close()
        stats.seconds = time.perf_counter() - start
        self.last_stats = stats
        return [r * config.n for r in replies] if greedy else replies

    def _batches(self, rows: list[tuple[int, int]], lengths: list[int]):
        """Consecutive rows (sorted by prompt length) cut at batch_size rows or max_batch_tokens padded
        prompt tokens, whichever comes first; a batch always takes at least one row."""
        chunk: list[tuple[int, int]] = []
        distinct = 0
        for i, j in rows:
            new_prompt = not chunk or chunk[-1][0] != i
            tokens = (distinct + new_prompt) * lengths[i]  # the newest row is the longest so far
            if chunk and (len(chunk) == self.batch_size or (new_prompt and tokens > self.max_batch_tokens)):
                yield chunk
                chunk, distinct, new_prompt = [], 0, True
            chunk.append((i, j))
            distinct += new_prompt
        if chunk:
            yield chunk

    def _progress_bar(self, total: int):
        if not self.progress:
            return None
        return Progress("generate", total, unit="seq", log=None)  # a bar on a terminal, else lines on stderr

    def _generate_rows(self, prompts: list[list[int]], indices: list[int], greedy: bool,
                       config: GenerationConfig, base_seed: int) -> tuple[list[str], int]:
        """Decode one batch; row r is sample `indices[r]` of prompt `prompts[r]`.

        Rows of the same prompt sit next to each other (the caller sorts them so): each distinct
        prompt is prefilled once and its cache copied to its rows.
        """
        device = _model_device(self.model)
        distinct: list[list[int]] = []
        slot: list[int] = []  # row -> index of its prompt in `distinct`
        for ids in prompts:
            if not distinct or distinct[-1] is not ids:
                distinct.append(ids)
            slot.append(len(distinct) - 1)
        width = max(len(p) for p in distinct)
        input_ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(distinct), width), dtype=torch.long)
        for row, ids in enumerate(distinct):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                         position_ids=positions.to(device), use_cache=True, **self._last_logits_only())
        cache = out.past_key_values
        expand = torch.tensor(slot, device=device)
        cache.batch_select_indices(expand)
        logits = out.logits[:, -1][expand]
        mask = attention.to(device)[expand]
        position = positions[:, -1].to(device)[expand]

        sampler = None
        if not greedy:
            seeds = [sample_seed(base_seed, ids, j) for ids, j in zip(prompts, indices)]
            sampler = GumbelSampler(seeds, config.temperature, config.top_p)
        stop = torch.tensor(self.stop_ids, device=device)
        live = list(range(len(prompts)))  # rows still decoding, in cache order
        generated: list[list[int]] = [[] for _ in prompts]
        for step in range(config.max_new_tokens):
            scores = logits.float() if sampler is None else sampler(None, logits, live)
            tokens = scores.argmax(-1)
            for r, t in zip(live, tokens.tolist()):
                generated[r].append(t)
            ended = torch.isin(tokens, stop)
            if step == config.max_new_tokens - 1 or bool(ended.all()):
                break
            if bool(ended.any()):  # finished rows leave the batch
                keep = (~ended).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                live = [live[k] for k in keep.tolist()]
                tokens, mask, position = tokens[keep], mask[keep], position[keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            position = position + 1
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position[:, None],
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
        return decode_replies(self.tokenizer, generated, self.stop_ids)

    def _last_logits_only(self) -> dict:
        """logits_to_keep=1 where the model takes it: a 150k vocabulary over a whole prompt is GBs."""
        import inspect

        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def decode_replies(tokenizer, generated: list[list[int]], stop_ids) -> tuple[list[str], int]:
    """Each row's reply text (cut before its first stop token) and the generated token count, a stop
    token included, anything drawn after it not."""
    texts, count = [], 0
    stop = set(stop_ids)
    for ids in generated:
        end = next((k for k, t in enumerate(ids) if t in stop), None)
        count += len(ids) if end is None else end + 1
        texts.append(tokenizer.decode(ids if end is None else ids[:end], skip_special_tokens=True))
    return texts, count


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class _generation_mode:
    """eval() + use_cache on + inference_mode for the duration; the previous state comes back.

    Models are loaded with use_cache False for training; generation needs the KV cache.
    """

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.configs = [c for c in _configs(self.model)]
        self.saved = [c.use_cache for c in self.configs]
        for c in self.configs:
            c.use_cache = True
        self.model.eval()
        self.inference = torch.inference_mode()
        self.inference.__enter__()
        return self

    def __exit__(self, *exc):
        self.inference.__exit__(*exc)
        for c, value in zip(self.configs, self.saved):
            c.use_cache = value
        self.model.train(self.was_training)


def _configs(model) -> list:
    """The config objects whose use_cache matters (a PEFT wrapper shares its base model's)."""
    seen, out = set(), []
    for m in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "use_cache") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append(cfg)
    return out
