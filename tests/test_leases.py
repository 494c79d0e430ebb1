"""bridge.leases: the starts a worker may make without asking, on an injected clock (no worker needed)."""

from __future__ import annotations

import threading

from hypothesis import given, strategies as st

from bridge.leases import Leases
from tests.support.clock import Clock

LIMITS = {"requests_per_minute": 600}


def in_threads(count: int, work) -> list:
    """What ``work()`` returned on each of ``count`` threads started together."""
    results: list = []
    lock = threading.Lock()

    def run() -> None:
        result = work()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def leases():
    clock = Clock()
    return Leases(clock), clock


def test_no_lease_no_start():
    held, _ = leases()
    assert not held.take("m", LIMITS, 10)


def test_k_starts_then_ask_again():
    held, clock = leases()
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 3, "valid_ms": 500}}, clock.t)
    assert [held.take("m", LIMITS, 10) for _ in range(4)] == [True, True, True, False]
    assert held.describe() == {"models": 0, "granted": 3, "taken": 3}


def test_the_window_counts_from_when_the_worker_asked():
    held, clock = leases()
    asked = clock.t
    clock.t += 0.2  # the answer took 200 ms to come
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 3, "valid_ms": 500}}, asked)
    clock.t = asked + 0.499
    assert held.take("m", LIMITS, 0)
    clock.t = asked + 0.5
    assert not held.take("m", LIMITS, 0) and held.held("m") == 0


def test_tokens_bound_the_leased_estimates_and_other_limits_ask():
    held, clock = leases()
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 5, "valid_ms": 500, "tokens": 100}}, clock.t)
    assert not held.take("m", LIMITS, 101)  # too big for the lease: asks, and the lease stays
    assert held.take("m", LIMITS, 60) and held.take("m", LIMITS, 40) and not held.take("m", LIMITS, 1)
    assert held.take("m", LIMITS, 0)
    assert not held.take("m", {"requests_per_minute": 60}, 0)  # granted under other limits
    assert not held.take("other", LIMITS, 0)


def test_a_new_lease_replaces_the_old_and_void_drops_it():
    held, clock = leases()
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 5, "valid_ms": 500}}, clock.t)
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 1, "valid_ms": 500}}, clock.t)
    assert held.held("m") == 1
    held.void("m")
    assert not held.take("m", LIMITS, 0)


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()),
                 st.dictionaries(st.sampled_from(["starts", "valid_ms", "tokens", "x"]),
                                 st.one_of(st.integers(-5, 70_000), st.booleans(), st.floats(), st.text()))))
def test_any_lease_is_taken_only_within_the_protocols_bounds(lease):
    held, clock = leases()
    held.grant("m", LIMITS, {"admitted": True, "lease": lease}, clock.t)
    valid = (isinstance(lease, dict) and all(type(lease.get(k)) is int for k in ("starts", "valid_ms"))
             and 1 <= lease["starts"] <= 1000 and 1 <= lease["valid_ms"] <= 60_000
             and (lease.get("tokens") is None or (type(lease["tokens"]) is int and lease["tokens"] >= 0)))
    assert held.held("m") == (lease["starts"] if valid else 0)


def test_threads_share_exactly_the_leased_starts():
    held, clock = leases()
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 50, "valid_ms": 500, "tokens": 500}}, clock.t)
    taken = in_threads(8, lambda: sum(held.take("m", LIMITS, 5) for _ in range(40)))
    assert sum(taken) == 50 == held.describe()["taken"]


def test_unused_tokens_are_kept_only_for_a_model_whose_client_leases_and_go_back_once():
    held, clock = leases()
    assert not held.give_back("m", 40)  # no lease ever: the client may not read returned tokens
    assert held.take_returned("m") == 0
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 1, "valid_ms": 500}}, clock.t)
    assert held.give_back("m", 40) and held.give_back("m", 0) and held.give_back("m", 2)
    assert not held.give_back("other", 5)
    assert held.take_returned("m") == 42
    assert held.take_returned("m") == 0  # sent once
    clock.t += 10  # the lease expired: its client still reads returned tokens
    assert held.give_back("m", 7) and held.take_returned("m") == 7


def test_threads_give_back_every_token_exactly_once():
    held, clock = leases()
    held.grant("m", LIMITS, {"admitted": True, "lease": {"starts": 1, "valid_ms": 500}}, clock.t)

    def work() -> int:
        mine = 0
        for i in range(200):
            held.give_back("m", 3)
            if i % 7 == 0:
                mine += held.take_returned("m")
        return mine

    taken = in_threads(6, work)
    assert sum(taken) + held.take_returned("m") == 6 * 200 * 3
