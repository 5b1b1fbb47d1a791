"""A minimal OpenAI-compatible chat server over any ChatGenerator (what `negalign serve` runs).

Endpoints: GET /v1/models and POST /v1/chat/completions (messages, n, temperature, top_p,
max_tokens or max_completion_tokens, seed, stream, stream_options.include_usage). Requests are
served on threads, but the model is used by one request at a time (a lock), since local backends
are not re-entrant.

Streaming (`stream: true`) answers with server-sent events in OpenAI's chunk format, so clients
that stream work unchanged; the reply is generated whole first and then sent in word-sized
chunks, so the first chunk arrives when generation ends, not earlier. `usage` counts the prompt
tokens (each conversation once) and the generated ones when the backend reports them. The model
is listed and answered under one name; a request naming another model gets 404, as OpenAI does.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from negalign.base.errors import UserError
from negalign.data.records import ROLES
from negalign.generation.base import ChatGenerator, GenerationConfig

log = logging.getLogger("negalign.generation.server")

MAX_BODY_BYTES = 8 * 2**20
DEFAULT_MAX_TOKENS = 256


class RequestError(Exception):
    """A bad request: answered with HTTP `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def parse_messages(value) -> list[dict[str, str]]:
    """Chat messages from a request; content may be a string or a list of text parts."""
    if not isinstance(value, list) or not value:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(400, f"messages[{k}].role must be one of {list(ROLES)}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise RequestError(400, f"messages[{k}].content: only text parts are supported", "messages")
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(400, f"messages[{k}].content must be a string", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def parse_config(body: dict, *, max_n: int) -> GenerationConfig:
    """GenerationConfig from the request's sampling fields, with OpenAI's defaults."""
    def number(name, default, lo, hi, kind=float):
        value = body.get(name, default)
        if value is None:
            value = default
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and float(value).is_integer()
        if not ok or not lo <= value <= hi:
            raise RequestError(400, f"'{name}' must be a {kind.__name__} in [{lo}, {hi}]", name)
        return kind(value)

    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    return GenerationConfig(
        n=number("n", 1, 1, max_n, int),
        temperature=number("temperature", 1.0, 0.0, 2.0),
        top_p=number("top_p", 1.0, 1e-6, 1.0),
        max_new_tokens=number(tokens_field, DEFAULT_MAX_TOKENS, 1, 2**20, int),
        seed=seed,
    )


def usage_body(stats) -> dict | None:
    """OpenAI's usage object from a backend's last_stats (None when it reports no counts)."""
    completion = getattr(stats, "tokens", None)
    if completion is None:
        return None
    prompt = getattr(stats, "prompt_tokens", None)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = None if prompt is None else prompt + completion
    return usage


def completion_body(model_name: str, replies: list[str], usage: dict | None) -> dict:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"} for i, text in enumerate(replies)],
    }
    if usage is not None:
        body["usage"] = usage
    return body


_PIECE = re.compile(r"\s*\S+|\s+")


def stream_chunks(model_name: str, replies: list[str], usage: dict | None, include_usage: bool) -> list[dict]:
    """The chat.completion.chunk objects of a streamed answer: per choice a role chunk, word-sized
    content chunks and a finish chunk; then, when asked for, one usage chunk with no choices."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model_name}

    def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    out = []
    for i, text in enumerate(replies):
        out.append(chunk(i, {"role": "assistant", "content": ""}))
        out += [chunk(i, {"content": piece}) for piece in _PIECE.findall(text)]
        out.append(chunk(i, {}, "stop"))
    if include_usage:
        out.append({**head, "choices": [], "usage": usage})
    return out


class ChatServer:
    """A running server: `.url` (ends in /v1), `.close()`; also a context manager."""

    def __init__(self, generator: ChatGenerator, host: str, port: int, model_name: str,
                 token: str | None, max_n: int):
        self.generator = generator
        self.model_name = model_name
        self.max_n = max_n
        self._token = token
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ChatServer(url={self.url!r}, model_name={self.model_name!r}, auth={self._token is not None})"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> "ChatServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="negalign-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block in the calling thread (the CLI), until close() or Ctrl-C."""
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> "ChatServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self._token.encode())

    def complete(self, body: dict) -> tuple[list[str], dict | None]:
        """The replies of a chat-completions request and their usage."""
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                               "model")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "'stream' must be a boolean", "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise RequestError(400, "'stream_options' must be an object", "stream_options")
        messages = parse_messages(body.get("messages"))
        config = parse_config(body, max_n=self.max_n)
        with self._lock:  # one request at a time on the model
            try:
                replies = self.generator.generate([messages], config)[0]
            except UserError as e:
                raise RequestError(400, str(e)) from None
            usage = usage_body(getattr(self.generator, "last_stats", None))
        return replies, usage


def _handler_class(server: ChatServer):
    class Handler(BaseHTTPRequestHandler):
        server_version = "negalign"

        def log_message(self, fmt, *args):  # keep stderr quiet; no headers are ever logged
            log.debug("%s %s", self.address_string(), fmt % args)

        def do_GET(self):
            if not self._check_auth():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": server.model_name, "object": "model", "created": 0, "owned_by": "negalign"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if not self._check_auth():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise RequestError(400, "request body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise RequestError(400, "request body must be a JSON object")
                replies, usage = server.complete(body)
                if body.get("stream"):
                    include = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._send_events(stream_chunks(server.model_name, replies, usage, include))
                else:
                    self._send(200, completion_body(server.model_name, replies, usage))
            except RequestError as e:
                self._error(e.status, str(e), e.param)
            except Exception as e:  # a model failure must not kill the server thread silently
                log.exception("chat completion failed")
                self._error(500, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")

        def _check_auth(self) -> bool:
            if server.authorized(self.headers.get("Authorization")):
                return True
            self._error(401, "missing or wrong bearer token", kind="authentication_error")
            return False

        def _error(self, status: int, message: str, param: str | None = None,
                   kind: str = "invalid_request_error"):
            self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

        def _send_events(self, chunks: list[dict]):
            """Server-sent events, then [DONE]; HTTP/1.0, so the closed connection ends the body."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for c in chunks:
                self.wfile.write(b"data: " + json.dumps(c, ensure_ascii=False).encode("utf-8") + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _send(self, status: int, obj: dict):
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def serve(generator: ChatGenerator, host: str = "127.0.0.1", port: int = 0, model_name: str = "negalign",
          *, api_key_env: str | None = None, api_key: str | None = None, max_n: int = 64,
          start: bool = True) -> ChatServer:
    """Start an OpenAI-compatible server for `generator` in a background thread.

    port 0 picks a free port (see `.url`). A bearer token is required when `api_key` is given
    or when the environment variable named by `api_key_env` is set and non-empty (the CLI
    should use the variable, so the token is not visible in the process list).
    """
    token = api_key
    if token is None and api_key_env:
        token = os.environ.get(api_key_env) or None
        if token is None:
            raise UserError(f"environment variable {api_key_env} is empty or unset", field="api_key_env")
    try:
        server = ChatServer(generator, host, port, model_name, token, max_n)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", field="port") from None
    return server.start() if start else server
