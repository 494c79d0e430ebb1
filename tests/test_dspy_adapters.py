"""Every adapter (chat, json, xml, two_step) through a real worker: offline answers of every type, and streaming.

The offline LM answers each adapter in its own format, with a value of each
whitelisted type, so a json-adapter program with non-text outputs runs (and
is tested) with no provider.
"""

from __future__ import annotations

import pytest

from bridge.backends.dspy import fieldtypes
from tests.support.dspy_workers import dspy_worker

ADAPTERS = ["chat", "json", "xml", "two_step"]
TYPED = {
    "inputs": {"ticket": "str"},
    "outputs": {"count": "int", "ratio": "float", "urgent": "bool", "tags": "list[str]",
                "scores": "dict[str, int]", "level": "Literal['low', 'high']", "note": "Optional[str]",
                "owner": {"type": {"object": {"team": "str", "size": "int"}, "name": "Owner"}},
                "people": {"type": {"list": {"object": {"name": "str", "age": "optional[int]"}}}}},
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with dspy_worker(tmp_path_factory.mktemp("dspy-adapters")) as w:
        w.call("configure_lm", {"model": "offline"})
        yield w


@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_offline_lm_answers_every_adapter_with_every_type(worker, adapter, module):
    s = f"offline-{adapter}-{module}"
    created = worker.call("create_program", {"signature": TYPED, "adapter": adapter, "module": module,
                                             "program_id": "p"}, session_id=s)
    result = worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "The app <crashes> & logs"}},
                         session_id=s)
    outputs = result["outputs"]
    for name, field in created["signature"]["outputs"].items():
        fieldtypes.check(field["type"], outputs[name], name)
    assert outputs["tags"][0].startswith("tags ") and outputs["level"] in ("low", "high")
    calls = result["usage"]["offline"]["lm_calls"]
    assert calls == (2 if adapter == "two_step" else 1)  # answered in the adapter's own format, no fallback
    again = worker.call("execute_program", {"program_id": "p", "inputs": {"ticket": "The app <crashes> & logs"}},
                        session_id=s)
    assert again["outputs"] == outputs  # deterministic
