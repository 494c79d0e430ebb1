"""``portbridge demo`` as a new user runs it: offline, and against an OpenAI-compatible server."""

from __future__ import annotations

import subprocess
import sys

from tests.support.openai_server import OpenAIServer
from tests.support.workers import ROOT, worker_env


def demo(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", "demo", *args], cwd=ROOT, env=worker_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_the_demo_runs_offline_and_prints_every_step():
    run = demo()
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    for step in ("-> configure_lm", "-> create_program", "-> execute_program", '"stream":true',
                 "-> export_program", '"format": "portbridge.dspy.program"', "done in"):
        assert step in out, step
    assert "reasoning: reasoning" in out and "~ answer: answer" in out and "chunk events" in out
    # The agent's tool is the demo's own function: the worker calls it back, the demo answers.
    assert '<~ callback capital_of {"country":' in out and '~> callback_result "Rome"' in out
    assert 'observation_0: "Rome"' in out and "answer: answer" in out.split("observation_0")[1]


def test_the_demo_against_a_real_http_model():
    with OpenAIServer() as server:
        run = demo("--model", "openai/echo", "--api-base", server.base_url, OPENAI_API_KEY="sk-demo-key-123")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "answer: echo says answer for What is the capital of France?" in run.stdout
    assert "sk-demo-key-123" not in run.stdout + run.stderr


def test_the_demo_says_what_failed():
    with OpenAIServer() as server:
        run = demo("--model", "openai/fail-401", "--api-base", server.base_url, OPENAI_API_KEY="sk-demo-key-123")
    assert run.returncode == 1
    assert "error lm_auth/auth_failed" in run.stdout
