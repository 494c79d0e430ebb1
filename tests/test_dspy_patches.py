"""The worker's changes to DSPy that concern speed only (bridge/backends/dspy/patches.py).

``kept`` on an injected clock, and the proxy variables it keeps honoured by a
real worker: the loopback server is the worker's HTTP proxy, the model's
``api_base`` a host that does not resolve, so an answer can only come through it.
"""

from __future__ import annotations

import time

import pytest

from bridge.backends.dspy.patches import kept
from tests.support.clock import Clock
from tests.support.dspy_workers import dspy_worker
from tests.support.openai_server import OpenAIServer
from tests.support.workers import worker_env


def test_kept_reads_at_most_once_per_ttl_and_hands_out_copies():
    reads: list[int] = []

    def read() -> dict:
        reads.append(1)
        return {"http": f"http://proxy-{len(reads)}:3128"}

    clock = Clock()
    proxies = kept(read, 1.0, clock)
    first = proxies()
    first["http"] = "changed by a caller"
    assert proxies() == {"http": "http://proxy-1:3128"} and len(reads) == 1
    clock.t += 0.999
    assert proxies()["http"] == "http://proxy-1:3128"
    clock.t += 0.001  # a second after the read: the variables are read again
    assert proxies()["http"] == "http://proxy-2:3128" and len(reads) == 2


@pytest.fixture
def server():
    with OpenAIServer() as s:
        yield s


def test_a_worker_still_sends_lm_requests_through_the_proxy_its_environment_names(tmp_path, server):
    proxy = server.base_url.removesuffix("/v1")
    env = worker_env(HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY="", no_proxy="")
    with dspy_worker(tmp_path, env=env) as worker:
        worker.call("configure_lm", {"model": "openai/echo", "api_base": "http://llm.invalid/v1",
                                     "api_key": "k"}, session_id="p")
        worker.call("create_program", {"signature": "question -> answer", "program_id": "qa"}, session_id="p")
        for i in range(3):  # the second and third within the second the variables are kept
            question = f"q{i} {time.time_ns()}"
            result = worker.call("execute_program", {"program_id": "qa", "inputs": {"question": question}},
                                 session_id="p")
            assert result["outputs"]["answer"]
    assert [seen.target for seen in server.seen] == ["http://llm.invalid/v1/chat/completions"] * 3


def test_one_type_adapter_per_builtin_type_and_the_same_output():
    # On a stand-in module: patching this process's DSPy would change the plain side of the
    # parity tests, which compare the worker (patched) with plain DSPy.
    import types

    import pydantic

    from bridge.backends.dspy.patches import cache_builtin_type_adapters

    utils = types.SimpleNamespace(TypeAdapter=pydantic.TypeAdapter)
    cache_builtin_type_adapters(utils)
    assert utils.TypeAdapter(str) is utils.TypeAdapter(str)
    assert utils.TypeAdapter(list[int]) is not utils.TypeAdapter(list[int])  # not a built-in class

    class Answer(pydantic.BaseModel):
        text: str

    assert utils.TypeAdapter(Answer) is not utils.TypeAdapter(Answer)
    for value in ("q?", 3, 2.5, True, None, [1, "a"], {"k": [1.5]}, Answer(text="x")):
        expected = pydantic.TypeAdapter(type(value)).dump_python(value, mode="json", fallback=str)
        assert utils.TypeAdapter(type(value)).dump_python(value, mode="json", fallback=str) == expected
    assert utils.TypeAdapter(int).validate_python("7") == 7
