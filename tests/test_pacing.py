"""The pacing limiter the Python client answers ``portbridge.admit`` with (bridge.devtools.pacing), on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.devtools.pacing import AdmissionError, Pacer


class Clock:
    """A fake monotonic clock that stands still (admissions only say how long they would wait)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now


class Recording(Pacer):
    """A pacer on the fake clock that records each admission's wait (seconds) in ``clock.slept``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, lambda seconds: None)
        self.clock = clock

    def admit(self, args: dict, timeout_s: float | None = None) -> dict:
        answer = super().admit(args, timeout_s)
        self.clock.slept.append(answer["waited_ms"] / 1000)
        return answer


def pacer() -> tuple[Pacer, Clock]:
    clock = Clock()
    return Recording(clock), clock


def args(limits: dict, tokens: int = 0, model: str = "m") -> dict:
    return {"model": model, "limits": limits, "estimated_tokens": tokens}


@settings(max_examples=200, deadline=None)
@given(rpm=st.integers(1, 6000), burst=st.integers(1, 5),
       gaps=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=60))
def test_starts_never_outrun_the_request_rate(rpm, burst, gaps):
    """Whatever the arrivals, in any window of w seconds at most burst + w * rpm / 60 calls start."""
    p, clock = pacer()
    starts = []
    for gap in gaps:
        clock.now += gap
        answer = p.admit(args({"requests_per_minute": rpm, "burst": burst}))
        assert answer["admitted"] is True
        starts.append(clock.now + clock.slept[-1])
    rate = rpm / 60
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            window = starts[j] - first
            assert j - i + 1 <= burst + window * rate + 1e-4  # waits are reported to the microsecond


def test_paced_starts_are_evenly_spread_not_bunched():
    p, clock = pacer()
    for _ in range(5):
        p.admit(args({"requests_per_minute": 600}))
    assert clock.slept == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_tokens_per_minute_holds_calls_back_by_their_estimate():
    p, clock = pacer()
    limits = {"tokens_per_minute": 6000}  # 100 tokens a second, a minute's worth at once
    p.admit(args(limits, 6000))
    p.admit(args(limits, 50))
    assert clock.slept == pytest.approx([0.0, 0.5])


def test_a_wait_past_the_budget_is_refused_and_gives_its_place_back():
    p, clock = pacer()
    limits = {"requests_per_minute": 60}
    p.admit(args(limits), timeout_s=5)
    with pytest.raises(AdmissionError) as info:
        p.admit(args(limits), timeout_s=0.5)  # the next start is 1 s away
    assert info.value.category == "timeout"
    p.admit(args(limits), timeout_s=5)
    assert clock.slept == pytest.approx([0.0, 1.0])  # the refused one took no slot


def test_a_429_pauses_its_model_only():
    p, clock = pacer()
    limits = {"requests_per_minute": 6000}
    p.admit(args(limits))
    p.admit(args(limits, model="other"))
    p.observe({"model": "m", "error": {"category": "lm_rate_limit", "code": "rate_limited", "message": "",
                                        "retry_after_s": 3.0}})
    p.observe({"model": "other", "error": None})
    p.observe("not an event")
    clock.now = 1.0
    p.admit(args(limits))
    p.admit(args(limits, model="other"))
    assert clock.slept == pytest.approx([0.0, 0.0, 2.0, 0.0])


def test_new_limits_for_a_model_start_afresh():
    p, clock = pacer()
    p.admit(args({"requests_per_minute": 1}))
    p.admit(args({"requests_per_minute": 6000}))
    assert clock.slept == [0.0, 0.0]


def test_malformed_admission_args_are_refused():
    p, _ = pacer()
    for bad in ({}, {"model": "m"}, {"model": 1, "limits": {}}):
        with pytest.raises(AdmissionError) as info:
            p.admit(bad)
        assert info.value.category == "validation"
