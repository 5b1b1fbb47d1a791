"""A client for any server that speaks the OpenAI chat-completions protocol (stdlib only).

vLLM, llama.cpp, hosted APIs and `negalign serve` all qualify. The API key is read from an
environment variable at each request and never kept on the object, so it cannot leak through
repr, logs, saved configs or exception text (server messages are scrubbed of it too).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from negalign.base.errors import UserError
from negalign.data.records import Messages
from negalign.generation.base import GenerationConfig, check_config

log = logging.getLogger("negalign.generation.openai")

_MAX_ERROR_CHARS = 300


class _RetryableError(Exception):
    """A failure worth retrying (timeout, connection, 429, 5xx); `wait` honours Retry-After."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class RateLimiter:
    """Spaces request starts at least 60 / requests_per_minute seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None):
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise UserError(f"must be positive, got {requests_per_minute!r}", field="requests_per_minute")
        self.interval = 0.0 if requests_per_minute is None else 60.0 / requests_per_minute
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.interval == 0:
            return
        with self._lock:  # reserve a start slot, then sleep outside the lock
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base * 2**attempt, at most cap."""
    return min(cap, base * 2 ** attempt) * (0.5 + 0.5 * random.random())


class OpenAIChatGenerator:
    """ChatGenerator that POSTs to {base_url}/chat/completions.

    n samples are requested with the `n` field; if the server returns fewer choices, the rest
    come from further requests (with seed + k when a seed is set, so they differ).
    Conversations run `concurrency` at a time, spaced by `requests_per_minute` when set.
    Retries: timeouts, connection errors, 429 and 5xx, with exponential backoff starting at
    `backoff` seconds (capped at `backoff_max`); any other 4xx raises UserError at once.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60, max_retries: int = 5, requests_per_minute: float | None = None,
                 concurrency: int = 4, extra_body: dict | None = None, backoff: float = 1.0,
                 backoff_max: float = 30.0):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(f"must start with http:// or https://, got {base_url!r}", field="base_url")
        if not model:
            raise UserError("the served model name is required", field="model")
        if concurrency < 1:
            raise UserError(f"must be a positive integer, got {concurrency!r}", field="concurrency")
        if max_retries < 0:
            raise UserError(f"must be >= 0, got {max_retries!r}", field="max_retries")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.limiter = RateLimiter(requests_per_minute)
        self.requests_sent = 0  # every HTTP attempt, retries included
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"OpenAIChatGenerator(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def generate(self, conversations: list[Messages], config: GenerationConfig) -> list[list[str]]:
        check_config(config)
        if not conversations:
            return []
        if self.concurrency == 1 or len(conversations) == 1:
            return [self._samples(conv, config) for conv in conversations]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations)))
        futures = [pool.submit(self._samples, conv, config) for conv in conversations]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            # Report the first failure now: queued requests are dropped, running ones finish alone.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return results

    def _samples(self, messages: Messages, config: GenerationConfig) -> list[str]:
        """config.n replies for one conversation, topping up when the server returns fewer."""
        replies: list[str] = []
        request = 0
        while len(replies) < config.n:
            seed = None if config.seed is None else config.seed + request
            got = self._complete(messages, config, config.n - len(replies), seed)
            if not got:  # a server that returns no choice at all would loop forever
                raise UserError("server returned no choices for a chat completion", path=self.url)
            replies.extend(got[:config.n - len(replies)])
            request += 1
        return replies

    def _complete(self, messages: Messages, config: GenerationConfig, n: int, seed: int | None) -> list[str]:
        body = {"model": self.model, "messages": messages, "n": n, "temperature": config.temperature,
                "top_p": config.top_p, "max_tokens": config.max_new_tokens}
        if seed is not None:
            body["seed"] = seed
        body.update(self.extra_body)
        payload = self._post_with_retries(json.dumps(body).encode("utf-8"))
        try:
            choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
            return [(c.get("message") or {}).get("content") or "" for c in choices]
        except (KeyError, TypeError, AttributeError):
            raise UserError("server reply is not a chat completion (no 'choices' list)", path=self.url) from None

    def _post_with_retries(self, data: bytes) -> dict:
        last = ""
        for attempt in range(self.max_retries + 1):
            self.limiter.acquire()
            try:
                return self._post(data)
            except _RetryableError as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                wait = backoff_seconds(attempt, self.backoff, self.backoff_max)
                if e.wait is not None:
                    wait = max(wait, min(e.wait, self.backoff_max))
                log.warning("chat request to %s failed (%s); retry %d/%d in %.2f s",
                            self.url, last, attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise UserError(f"chat request failed after {self.max_retries + 1} attempts; last error: {last}",
                        path=self.url)

    def _post(self, data: bytes) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with self._count_lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            status = e.code
            message = _scrub(_error_message(e.read()), key)
            retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            e.close()
            if status == 429 or status >= 500:
                raise _RetryableError(f"HTTP {status}: {message}", retry_after) from None
            raise UserError(f"server answered HTTP {status}: {message}", path=self.url) from None
        except (OSError, http.client.HTTPException) as e:  # timeouts, refused or dropped connections
            reason = getattr(e, "reason", None) or e
            raise _RetryableError(_scrub(f"{type(e).__name__}: {reason}", key)) from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError("server reply is not JSON", path=self.url) from None


def _error_message(raw: bytes) -> str:
    """The server's own error text: OpenAI-style {"error": {"message": ...}} or the body itself."""
    text = raw.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        elif isinstance(err, str):
            text = err
    except (json.JSONDecodeError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:_MAX_ERROR_CHARS] or "(empty body)"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: let the backoff decide
        return None


def _scrub(text: str, key: str | None) -> str:
    """Remove the API key (and its longer fragments) if a server echoes it back."""
    if not key:
        return text
    text = text.replace(key, "***")
    if len(key) >= 12:  # some servers echo a shortened key, e.g. 'sk-abc...wxyz'
        for part in (key[:8], key[-8:]):
            text = text.replace(part, "***")
    return text
