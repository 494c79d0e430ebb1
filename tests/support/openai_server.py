"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` the way a model driven by DSPy's
adapters would: it reads the output field names from the system message
(``Your output fields are: 1. `answer` ...``) and the input values from the
last user message (``[[ ## question ## ]]`` or ``<question>`` blocks), and
answers every output field with ``"<model> says <field> for <first input
value>"`` in the format the adapter asked for (ChatAdapter's ``[[ ## f ## ]]``
blocks, a JSON object, or XML tags; ``loopback_answers``). The answer names the model, so tests can
tell which session's LM served a call. ``POST /v1/embeddings`` answers each
input with a deterministic unit vector of its words. A test can script the
next answers of a model (``server.script(model, text, ...)``), and every
request is kept whole in ``server.seen``. Another path gets a 404
``{"detail": "Not Found"}``, as FastAPI-based servers answer. Standard
library only.

Behaviour is chosen by the model name the client sends (the part after
``openai/`` in a DSPy model string), so one server serves every test:

=====================  ===================================================
``fail-401``           401 invalid API key
``fail-403``           403 permission denied
``fail-429``           429 rate limited (``Retry-After: 0``)
``fail-500``           500 server error
``fail-503``           503 overloaded
``context-window``     400 ``context_length_exceeded``
``garbage``            200 with a body that is not JSON at all
``unparseable``        200, a well-formed completion whose text fits no signature
``slow-<ms>``          waits <ms> milliseconds, then answers normally
``no-usage...``        answers normally, without ``usage`` (also when streaming)
``throttled-<n>-<ms>``  429 with ``Retry-After: <ms>/1000`` for the first <n> requests, then answers
anything else          answers normally (after ``--latency-ms``)
=====================  ===================================================

``"stream": true`` answers as server-sent events, the text split into small
pieces (``--chunk-chars``, ``--chunk-delay-ms``), with a usage chunk when
``stream_options.include_usage`` is set. With ``--api-key`` every request must
carry ``Authorization: Bearer <key>`` or gets a 401.

A provider's rate limit (``--rate-limit N --rate-window-s S``, or
``rate_limit=``/``rate_window_s=`` in tests): at most N chat completions per
model start in any S seconds; one more is answered at once with a 429 and a
``Retry-After`` (decimal seconds). ``GET /stats`` (``server.stats()``) answers
what the server counted: ``requests`` (POSTs received), ``completions``
(answered 200), ``responses_429`` (every 429 sent) and ``rate_limited`` (the
429s of the limit); ``GET /stats?reset=1`` also zeroes them.

As a script (for benchmarks; Elixir tests start it as a process too)::

    python tests/support/openai_server.py --port 0 --latency-ms 20 --rate-limit 10 --rate-window-s 1
    # prints: listening on http://127.0.0.1:PORT/v1
    curl http://127.0.0.1:PORT/stats

In tests::

    with OpenAIServer() as server:
        server.base_url  # "http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:
    from tests.support.loopback_answers import EMBEDDING_DIMS, completion_text, embedding, tokens as count_tokens
    from tests.support.provider_limits import Counters, RequestWindow, retry_after_header
except ImportError:  # run as a script from anywhere: the modules lie beside this file
    from loopback_answers import EMBEDDING_DIMS, completion_text, embedding, tokens as count_tokens  # type: ignore[no-redef]
    from provider_limits import Counters, RequestWindow, retry_after_header  # type: ignore[no-redef]

__all__ = ["OpenAIServer", "Seen", "Settings", "EMBEDDING_DIMS", "completion_text", "embedding"]

THROTTLED = re.compile(r"^throttled-(\d+)-(\d+)$")
FAILURES = {
    "fail-401": (401, "invalid_api_key", "Incorrect API key provided."),
    "fail-403": (403, "permission_denied", "You are not allowed to use this model."),
    "fail-429": (429, "rate_limit_exceeded", "Rate limit reached for requests."),
    "fail-500": (500, "server_error", "The server had an error while processing your request."),
    "fail-503": (503, "overloaded", "The engine is currently overloaded."),
    "context-window": (400, "context_length_exceeded", "This model's maximum context length is 8 tokens."),
}


@dataclass
class Settings:
    latency_ms: float = 0.0
    chunk_chars: int = 8
    chunk_delay_ms: float = 0.0
    api_key: str | None = None
    rate_limit: int | None = None  # chat completions per model per window (None: no limit)
    rate_window_s: float = 60.0


@dataclass
class Seen:
    """What the server received: one entry per request, for assertions."""

    model: str
    stream: bool
    authorization: str | None
    messages: list = field(repr=False, default_factory=list)
    body: dict = field(repr=False, default_factory=dict)  # the whole request, as received
    path: str = "/v1/chat/completions"
    target: str = ""  # the request line's target as sent: absolute ("http://host/v1/...") through a proxy


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # or keep-alive clients stall on delayed ACKs
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass

    def _json(self, status: int, doc: dict, headers: dict | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, retry_after: float = 0.0) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        headers = None
        if status == 429:
            headers = {"Retry-After": retry_after_header(retry_after)}
            self.server.counters.add("responses_429")
        self._json(status, {"error": {"message": message, "type": kind, "code": code, "param": None}}, headers)

    def _wait(self, seconds: float) -> bool:
        """Sleep like a slow model; False if the server is shutting down meanwhile."""
        return not self.server.stopping.wait(seconds) if seconds > 0 else True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path.rstrip("/").endswith("/stats"):
            reset = parse_qs(url.query).get("reset", ["0"])[0] not in ("0", "", "false")
            self._json(200, self.server.stats(reset))
        elif self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "echo", "object": "model"}]})
        else:
            self._error(404, "not_found", f"no route {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        # A client that takes this server for its HTTP proxy sends the absolute URL: served alike.
        route = urlsplit(self.path).path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/embeddings"):
            # As FastAPI-based servers (vLLM and most self-hosted ones) answer a wrong api_base.
            self._json(404, {"detail": "Not Found"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, "invalid_json", "the request body is not JSON")
            return
        settings = self.server.settings
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        auth = self.headers.get("Authorization")
        self.server.record(Seen(model, stream, auth, body.get("messages") or [], body, route, self.path))
        if settings.api_key is not None and auth != f"Bearer {settings.api_key}":
            self._error(401, "invalid_api_key", "Incorrect API key provided.")
            return
        if route == "/v1/embeddings":
            self._embeddings(model, body)
            return
        window = self.server.window
        wait = window.admit(model) if window is not None else None
        if wait is not None:
            self.server.counters.add("rate_limited")
            self._error(429, "rate_limit_exceeded", f"Rate limit reached for {model}: {window.limit} requests per "
                        f"{window.window_s:g} s. Please try again in {wait:.3f}s.", wait)
            return
        delay = settings.latency_ms / 1000
        if model.startswith("slow-"):
            delay = float(model[5:] or 0) / 1000
        if not self._wait(delay):
            return
        if model in FAILURES:
            self._error(*FAILURES[model])
            return
        throttled = THROTTLED.match(model)
        if throttled and self.server.throttle(model, int(throttled.group(1))):
            self._error(429, "rate_limit_exceeded", "Rate limit reached for requests.", int(throttled.group(2)) / 1000)
            return
        if model == "garbage":
            page = b"<html><body>502 Bad Gateway (upstream sent garbage)</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        messages = body.get("messages") or []
        scripted = self.server.scripted(model, messages)
        if scripted is not None:
            text = scripted
        elif model == "unparseable":
            text = "I would rather not follow any format today."
        else:
            text = completion_text(model, messages, body.get("response_format"))
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count_tokens(text),
                 "total_tokens": prompt_tokens + count_tokens(text)}
        if model.startswith("no-usage"):
            usage = None  # as many OpenAI-compatible servers answer (and stream) without it
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(model, text, usage if include_usage else None)
            return
        doc = {
            "id": f"chatcmpl-{self.server.count()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
        }
        if usage is not None:
            doc["usage"] = usage
        self.server.counters.add("completions")
        self._json(200, doc)

    def _embeddings(self, model: str, body: dict) -> None:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        data = [{"object": "embedding", "index": i, "embedding": embedding(str(t))} for i, t in enumerate(texts)]
        tokens = sum(count_tokens(str(t)) for t in texts)
        self._json(200, {"object": "list", "model": model, "data": data,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _stream(self, model: str, text: str, usage: dict | None) -> None:
        settings = self.server.settings
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        cid = f"chatcmpl-{self.server.count()}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

        def send(doc) -> None:
            self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
            self.wfile.flush()

        self.server.counters.add("completions")
        send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}]})
        step = max(1, settings.chunk_chars)
        for i in range(0, len(text), step):
            if not self._wait(settings.chunk_delay_ms / 1000):
                return
            send({**base, "choices": [{"index": 0, "delta": {"content": text[i:i + step]}, "finish_reason": None}]})
        send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage is not None:
            send({**base, "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under concurrent clients
    allow_reuse_address = True

    def __init__(self, address, settings: Settings) -> None:
        super().__init__(address, Handler)
        self.settings = settings
        self.counters = Counters()
        self.window = RequestWindow(settings.rate_limit, settings.rate_window_s) if settings.rate_limit else None
        self.stopping = threading.Event()
        self.seen: list[Seen] = []
        self.scripts: dict[str, list] = {}  # model -> answers still to give (texts or fn(messages) -> text)
        self.throttled: dict[str, int] = {}  # throttled-<n>-<ms> model -> requests so far
        self._lock = threading.Lock()
        self._count = 0

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up waiting is normal here
            super().handle_error(request, client_address)

    def record(self, seen: Seen) -> None:
        self.counters.add("requests")
        with self._lock:
            self.seen.append(seen)

    def stats(self, reset: bool = False) -> dict:
        window = self.window
        return {**self.counters.snapshot(reset), "rate_limit": window.describe() if window is not None else None}

    def scripted(self, model: str, messages: list) -> str | None:
        """The next scripted answer for ``model``, if a test scripted one (consumed in order)."""
        with self._lock:
            queue = self.scripts.get(model)
            if not queue:
                return None
            answer = queue.pop(0)
        return answer(messages) if callable(answer) else answer

    def count(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def throttle(self, model: str, first: int) -> bool:
        """Whether this request is one of the first ``first`` of ``model`` (a throttled-<n>-<ms> model)."""
        with self._lock:
            seen = self.throttled[model] = self.throttled.get(model, 0) + 1
        return seen <= first


class OpenAIServer:
    """The server on a free loopback port, served from a background thread."""

    def __init__(self, port: int = 0, **settings) -> None:
        self._server = _Server(("127.0.0.1", port), Settings(**settings))
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-server", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def settings(self) -> Settings:
        return self._server.settings

    @property
    def seen(self) -> list[Seen]:
        return list(self._server.seen)

    def stats(self, reset: bool = False) -> dict:
        """What the server counted (as ``GET /stats``): requests, completions, responses_429, rate_limited."""
        return self._server.stats(reset)

    def limit_rate(self, limit: int | None, window_s: float = 60.0) -> None:
        """Enforce (or, with None, stop enforcing) ``limit`` chat completions per model per ``window_s``."""
        self._server.window = RequestWindow(limit, window_s) if limit else None

    def script(self, model: str, *answers) -> None:
        """Answer the next calls to ``model`` with these texts (or ``fn(messages) -> text``), in order."""
        with self._server._lock:
            self._server.scripts.setdefault(model, []).extend(answers)

    def start(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-chars", type=int, default=8)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--rate-limit", type=int, default=None,
                        help="at most this many chat completions per model in any --rate-window-s seconds (429 beyond)")
    parser.add_argument("--rate-window-s", type=float, default=60.0)
    ns = parser.parse_args(argv)
    if ns.rate_limit is not None and (ns.rate_limit < 1 or ns.rate_window_s <= 0):
        parser.error("--rate-limit must be at least 1 and --rate-window-s above 0")
    server = OpenAIServer(ns.port, latency_ms=ns.latency_ms, chunk_chars=ns.chunk_chars,
                          chunk_delay_ms=ns.chunk_delay_ms, api_key=ns.api_key, rate_limit=ns.rate_limit,
                          rate_window_s=ns.rate_window_s)
    print(f"listening on {server.base_url}", flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
