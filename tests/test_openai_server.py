"""The loopback OpenAI server's enforced rate limit and counters, in-process and as the standalone process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from hypothesis import given
from hypothesis import strategies as st

from tests.support.openai_server import OpenAIServer
from tests.support.provider_limits import RequestWindow
from tests.support.workers import ROOT

SCRIPT = os.path.join(ROOT, "tests", "support", "openai_server.py")


def post(base_url: str, model: str) -> tuple[int, dict, dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@given(st.integers(1, 5), st.floats(0.5, 10), st.lists(st.floats(0, 3, allow_nan=False), max_size=40))
def test_a_window_admits_at_most_its_limit_in_any_window_and_says_when_to_come_back(limit, window_s, gaps):
    window, now, admitted = RequestWindow(limit, window_s), 0.0, []
    for gap in gaps:
        now += gap
        wait = window.admit("m", now)
        if wait is None:
            admitted.append(now)
        else:
            assert 0 < wait <= window_s + 1e-9
            assert window.admit("m", now + wait) is None  # coming back after Retry-After works
            admitted.append(now + wait)
            now += wait
    # The window forgets a start window_s after it, to the 1e-9 s its float clock is
    # taken to (so that a client back exactly after Retry-After is in): judged alike.
    for i, first in enumerate(admitted):
        assert sum(1 for t in admitted[i:] if t < first + window_s - 1e-9) <= limit


def test_over_the_limit_a_model_gets_429_with_retry_after_and_the_server_counts_it():
    with OpenAIServer(rate_limit=2, rate_window_s=30) as server:
        statuses = [post(server.base_url, "m")[0] for _ in range(3)]
        status, headers, body = post(server.base_url, "m")
        assert post(server.base_url, "another-model")[0] == 200  # limits are per model
        assert statuses == [200, 200, 429] and status == 429
        assert 0 < float(headers["Retry-After"]) <= 30 and body["error"]["code"] == "rate_limit_exceeded"
        assert server.stats() == {"requests": 5, "completions": 3, "responses_429": 2, "rate_limited": 2,
                                  "rate_limit": {"limit": 2, "window_s": 30.0}}
        server.limit_rate(None)
        assert post(server.base_url, "m")[0] == 200


def test_the_standalone_server_takes_its_limit_on_the_command_line_and_reports_on_get_stats():
    process = subprocess.Popen([sys.executable, SCRIPT, "--port", "0", "--rate-limit", "1", "--rate-window-s", "60"],
                               stdout=subprocess.PIPE, text=True, cwd="/")  # runs from anywhere
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base_url = line.split()[-1]
        root = base_url.rsplit("/v1", 1)[0]
        assert [post(base_url, "m")[0] for _ in range(2)] == [200, 429]
        assert get(f"{root}/stats") == {"requests": 2, "completions": 1, "responses_429": 1, "rate_limited": 1,
                                        "rate_limit": {"limit": 1, "window_s": 60.0}}
        assert get(f"{root}/stats?reset=1")["requests"] == 2
        assert get(f"{root}/stats")["requests"] == 0
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def test_bad_limits_on_the_command_line_are_refused():
    result = subprocess.run([sys.executable, SCRIPT, "--rate-limit", "0"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--rate-limit" in result.stderr
