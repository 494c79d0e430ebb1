"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` the way a model driven by DSPy's
adapters would: it reads the output field names from the system message
(``Your output fields are: 1. `answer` ...``) and the input values from the
last user message (``[[ ## question ## ]]`` or ``<question>`` blocks), and
answers every output field with ``"<model> says <field> for <first input
value>"`` in the format the adapter asked for (ChatAdapter's ``[[ ## f ## ]]``
blocks, a JSON object, or XML tags). The answer names the model, so tests can
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
anything else          answers normally (after ``--latency-ms``)
=====================  ===================================================

``"stream": true`` answers as server-sent events, the text split into small
pieces (``--chunk-chars``, ``--chunk-delay-ms``), with a usage chunk when
``stream_options.include_usage`` is set. With ``--api-key`` every request must
carry ``Authorization: Bearer <key>`` or gets a 401.

As a script (for benchmarks)::

    python tests/support/openai_server.py --port 0 --latency-ms 20
    # prints: listening on http://127.0.0.1:PORT/v1

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

OUTPUT_FIELDS = re.compile(r"Your output fields are:\n(.*?)(?:\n[A-Z]|\Z)", re.S)
FIELD_NAME = re.compile(r"^\s*\d+\. `(\w+)`", re.M)
INPUT_BLOCK = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", re.S)
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


@dataclass
class Seen:
    """What the server received: one entry per request, for assertions."""

    model: str
    stream: bool
    authorization: str | None
    messages: list = field(repr=False, default_factory=list)
    body: dict = field(repr=False, default_factory=dict)  # the whole request, as received
    path: str = "/v1/chat/completions"


XML_BLOCK = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)
EMBEDDING_DIMS = 32


def _text(content) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def completion_text(model: str, messages: list[dict], response_format=None) -> str:
    """The answer to a conversation, in the format its DSPy adapter asked for (chat, JSON or XML)."""
    system = _text(next((m.get("content") for m in messages if m.get("role") == "system"), ""))
    last_user = _text(next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""))
    found = OUTPUT_FIELDS.search(system)
    outputs = FIELD_NAME.findall(found.group(1)) if found else ["answer"]
    xml = "wrapped in XML tags" in last_user
    inputs = XML_BLOCK.findall(last_user) if xml else INPUT_BLOCK.findall(last_user)
    subject = inputs[0][1].strip() if inputs else "nothing"
    values = {name: f"{model} says {name} for {subject}" for name in outputs}
    if response_format is not None or "Outputs will be a JSON object" in system:
        return json.dumps(values)
    if xml:
        return "\n".join(f"<{name}>\n{value}\n</{name}>" for name, value in values.items())
    blocks = [f"[[ ## {name} ## ]]\n{value}" for name, value in values.items()]
    return "\n\n".join(blocks + ["[[ ## completed ## ]]"])


def embedding(text: str) -> list[float]:
    """A deterministic unit vector for a text: its words hashed into EMBEDDING_DIMS buckets."""
    import hashlib
    import math

    vector = [0.0] * EMBEDDING_DIMS
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % EMBEDDING_DIMS] += 1.0 if digest[1] % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


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

    def _error(self, status: int, code: str, message: str) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        headers = {"Retry-After": "0"} if status == 429 else None
        self._json(status, {"error": {"message": message, "type": kind, "code": code, "param": None}}, headers)

    def _wait(self, seconds: float) -> bool:
        """Sleep like a slow model; False if the server is shutting down meanwhile."""
        return not self.server.stopping.wait(seconds) if seconds > 0 else True

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "echo", "object": "model"}]})
        else:
            self._error(404, "not_found", f"no route {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        route = self.path.rstrip("/")
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
        self.server.record(Seen(model, stream, auth, body.get("messages") or [], body, route))
        if settings.api_key is not None and auth != f"Bearer {settings.api_key}":
            self._error(401, "invalid_api_key", "Incorrect API key provided.")
            return
        if route == "/v1/embeddings":
            self._embeddings(model, body)
            return
        delay = settings.latency_ms / 1000
        if model.startswith("slow-"):
            delay = float(model[5:] or 0) / 1000
        if not self._wait(delay):
            return
        if model in FAILURES:
            self._error(*FAILURES[model])
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
        prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(text),
                 "total_tokens": prompt_tokens + _tokens(text)}
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
        self._json(200, doc)

    def _embeddings(self, model: str, body: dict) -> None:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        data = [{"object": "embedding", "index": i, "embedding": embedding(str(t))} for i, t in enumerate(texts)]
        tokens = sum(_tokens(str(t)) for t in texts)
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
        self.stopping = threading.Event()
        self.seen: list[Seen] = []
        self.scripts: dict[str, list] = {}  # model -> answers still to give (texts or fn(messages) -> text)
        self._lock = threading.Lock()
        self._count = 0

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up waiting is normal here
            super().handle_error(request, client_address)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

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
    ns = parser.parse_args(argv)
    server = OpenAIServer(ns.port, latency_ms=ns.latency_ms, chunk_chars=ns.chunk_chars,
                          chunk_delay_ms=ns.chunk_delay_ms, api_key=ns.api_key)
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
