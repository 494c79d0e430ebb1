"""DSPy's remedies, worded for a Python program, said in the protocol's terms.

The worker's caller configures its LM with ``configure_lm``'s arguments, never
with ``dspy.LM(...)``: every message the DSPy backend returns is passed through
``classify.in_caller_terms``. These are the wordings DSPy 3.4 (and its vendored
lm15) use.
"""

from __future__ import annotations

import pytest

from bridge.backends.dspy.classify import classify, in_caller_terms, program_failure

DSPY_WORDINGS = [
    ('openai: no credential given; set OPENAI_API_KEY or pass api_key=',
     "openai: no credential given; set OPENAI_API_KEY in the worker's environment or pass api_key to configure_lm"),
    ("openai: no credential given; pass api_key=", "openai: no credential given; pass api_key to configure_lm"),
    ('no key: pass api_key="..." to dspy.LM(...)', "no key: pass api_key to configure_lm"),
    ("  - Pass the key explicitly (api_key, or RouterConfig api_keys), or set OPENAI_API_KEY=...",
     "  - Pass the key explicitly (the api_key argument of configure_lm), or set OPENAI_API_KEY=..."),
    ("Pass the key explicitly (api_key= on dspy.LM)", "Pass the key explicitly (the api_key argument of configure_lm)"),
    ("No LM is loaded. Please configure the LM using `dspy.configure(lm=dspy.LM(...))`.",
     "No LM is loaded. Please configure the LM using configure_lm."),
    ("set a default LM through dspy.configure(lm=...)", "set a default LM through configure_lm"),
    ("set it in the environment or RouterConfig(api_keys={'openai': \"...\"}).",
     "set it in the environment or the api_key argument of configure_lm."),
]


@pytest.mark.parametrize("dspy_says, caller_reads", DSPY_WORDINGS)
def test_each_python_remedy_is_said_in_the_protocols_terms(dspy_says, caller_reads):
    assert in_caller_terms(dspy_says) == caller_reads


def test_messages_without_python_advice_are_left_alone():
    for message in ("rate limited; retry after 2 s", "api_key_set is true", "pass api_keys to x"):
        assert in_caller_terms(message) == message


def test_classified_and_program_failures_go_through_it():
    from dspy.utils.exceptions import LMNotConfiguredError

    error = classify(LMNotConfiguredError("openai: no credential given; pass api_key=", model="openai/x"))
    assert (error.category, error.code) == ("lm_auth", "no_credentials")
    assert error.message.endswith("openai: no credential given; pass api_key to configure_lm")
    failure = program_failure(ValueError("set a default LM through dspy.configure(lm=...)"))
    assert failure.message == "ValueError: set a default LM through configure_lm"


def test_a_task_groups_failures_each_keep_their_own_message_and_category():
    """Never "ExceptionGroup: unhandled errors in a TaskGroup (2 sub-exceptions)": each leaf is classified."""
    from dspy.utils.exceptions import LMRateLimitError

    group = ExceptionGroup("unhandled errors in a TaskGroup", [
        ValueError("the stream was closed"), ExceptionGroup("inner", [LMRateLimitError("slow down", model="m")])])
    error = program_failure(group)
    assert (error.category, error.code) == ("execution", "program_failed")  # the first failure speaks
    assert "ValueError: the stream was closed" in error.message and "slow down" in error.message
    assert "sub-exception" not in error.message
    assert [(e["category"], e["code"]) for e in error.details["errors"]] == \
        [("execution", "program_failed"), ("lm_rate_limit", "rate_limited")]
