"""OpenAI-compatible client against scripted local HTTP servers (real sockets on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from negalign.base.errors import UserError
from negalign.generation.base import GenerationConfig
from negalign.generation.openai_backend import OpenAIChatGenerator, RateLimiter, backoff_seconds

CONV = [{"role": "user", "content": "Say hi"}]


class ScriptedServer:
    """Answers each POST with the next scripted (status, body, delay); the last one repeats."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []  # {"body": ..., "auth": ...}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    k = len(outer.requests)
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization"),
                                           "path": self.path, "t": time.monotonic()})
                    status, reply, delay = outer.script[min(k, len(outer.script) - 1)]
                if delay:
                    time.sleep(delay)
                reply = reply(body) if callable(reply) else reply
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(n_choices=None):
    def reply(body):
        n = body.get("n", 1) if n_choices is None else n_choices
        return {"choices": [{"index": i, "message": {"role": "assistant",
                                                     "content": f"reply {body.get('seed')}-{i}"}}
                            for i in range(n)]}
    return reply


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        s = ScriptedServer(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def client(url, **kw):
    kw.setdefault("backoff", 0.001)
    return OpenAIChatGenerator(url, "m", **kw)


def test_request_body_and_n_choices(scripted):
    server = scripted([(200, ok(), 0)])
    cfg = GenerationConfig(n=3, temperature=0.7, top_p=0.9, max_new_tokens=17, seed=5)
    out = client(server.url, extra_body={"stop": ["x"]}).generate([CONV, CONV], cfg)
    assert out == [["reply 5-0", "reply 5-1", "reply 5-2"]] * 2
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert body == {"model": "m", "messages": CONV, "n": 3, "temperature": 0.7, "top_p": 0.9,
                    "max_tokens": 17, "seed": 5, "stop": ["x"]}


def test_falls_back_to_repeated_requests_when_server_ignores_n(scripted):
    server = scripted([(200, ok(n_choices=1), 0)])
    out = client(server.url).generate([CONV], GenerationConfig(n=3, seed=10))
    assert out == [["reply 10-0", "reply 11-0", "reply 12-0"]]  # seed moves so samples differ
    assert [r["body"]["n"] for r in server.requests] == [3, 2, 1]


def test_retries_500_and_429_then_succeeds(scripted):
    server = scripted([(500, {"error": {"message": "boom"}}, 0),
                       (429, {"error": {"message": "slow down"}}, 0),
                       (503, "unavailable", 0),
                       (200, ok(), 0)])
    gen = client(server.url, max_retries=5)
    assert gen.generate([CONV], GenerationConfig(n=1, seed=1)) == [["reply 1-0"]]
    assert len(server.requests) == 4 and gen.requests_sent == 4


def test_gives_up_after_max_retries_with_one_line_error(scripted):
    server = scripted([(502, {"error": {"message": "bad\ngateway"}}, 0)])
    with pytest.raises(UserError) as e:
        client(server.url, max_retries=2).generate([CONV], GenerationConfig())
    assert len(server.requests) == 3
    assert "\n" not in str(e.value) and "HTTP 502: bad gateway" in str(e.value)


def test_client_error_is_not_retried_and_is_one_line(scripted):
    server = scripted([(400, {"error": {"message": "model 'm' does not\nexist"}}, 0)])
    with pytest.raises(UserError) as e:
        client(server.url).generate([CONV], GenerationConfig())
    assert len(server.requests) == 1
    text = str(e.value)
    assert "\n" not in text and "HTTP 400" in text and "model 'm' does not exist" in text
    assert server.url in text


def test_timeout_is_retried(scripted):
    server = scripted([(200, ok(), 1.0), (200, ok(), 0)])
    out = client(server.url, timeout=0.2, max_retries=1).generate([CONV], GenerationConfig(seed=3))
    assert out == [["reply 3-0"]] and len(server.requests) == 2


def test_connection_refused_is_retried_then_user_error(scripted):
    server = scripted([(200, ok(), 0)])
    url = server.url
    server.close()  # nothing listens there any more
    gen = client(url, max_retries=2)
    with pytest.raises(UserError, match="after 3 attempts"):
        gen.generate([CONV], GenerationConfig())
    assert gen.requests_sent == 3


def test_api_key_sent_but_never_shown(scripted, monkeypatch):
    secret = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("NEGALIGN_TEST_KEY", secret)
    echo = {"error": {"message": f"Incorrect API key provided: {secret[:8]}...{secret[-4:]} ({secret})"}}
    server = scripted([(200, ok(), 0), (401, echo, 0)])
    gen = client(server.url, api_key_env="NEGALIGN_TEST_KEY")
    gen.generate([CONV], GenerationConfig())
    assert server.requests[0]["auth"] == f"Bearer {secret}"
    with pytest.raises(UserError) as e:
        gen.generate([CONV], GenerationConfig())
    assert "HTTP 401" in str(e.value)
    for text in (str(e.value), repr(e.value), repr(gen), str(vars(gen))):
        assert secret not in text and secret[:8] not in text


def test_no_key_in_env_sends_no_authorization(scripted, monkeypatch):
    monkeypatch.delenv("NEGALIGN_TEST_KEY", raising=False)
    server = scripted([(200, ok(), 0)])
    client(server.url, api_key_env="NEGALIGN_TEST_KEY").generate([CONV], GenerationConfig())
    assert server.requests[0]["auth"] is None


def test_concurrency_keeps_input_order(scripted):
    server = scripted([(200, lambda b: {"choices": [{"message": {"content": b["messages"][0]["content"]}}]}, 0.05)])
    convs = [[{"role": "user", "content": f"p{i}"}] for i in range(8)]
    t0 = time.monotonic()
    out = client(server.url, concurrency=4).generate(convs, GenerationConfig())
    assert out == [[f"p{i}"] for i in range(8)]
    assert time.monotonic() - t0 < 8 * 0.05  # requests overlapped


def test_rate_limit_spaces_requests(scripted):
    server = scripted([(200, ok(), 0)])
    convs = [CONV] * 4
    client(server.url, requests_per_minute=600, concurrency=4).generate(convs, GenerationConfig())
    starts = sorted(r["t"] for r in server.requests)
    assert starts[-1] - starts[0] >= 3 * 0.1 * 0.9


def test_null_content_becomes_empty_string(scripted):
    server = scripted([(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}, 0)])
    assert client(server.url).generate([CONV], GenerationConfig()) == [[""]]


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="base_url"):
        OpenAIChatGenerator("localhost:8000", "m")
    with pytest.raises(UserError, match="requests_per_minute"):
        RateLimiter(0)
    with pytest.raises(UserError, match="field 'n'"):
        OpenAIChatGenerator("http://127.0.0.1:9/v1", "m").generate([CONV], GenerationConfig(n=0))


def test_backoff_grows_and_is_capped():
    assert 0.5 <= backoff_seconds(0, 1.0, 30) <= 1.0
    assert 4.0 <= backoff_seconds(3, 1.0, 30) <= 8.0
    assert backoff_seconds(10, 1.0, 30) <= 30
