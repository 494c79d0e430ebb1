"""Soak mode of the fuzz suite: the properties of tests/test_fuzz.py, for as long as you like.

    .venv/bin/python -m tests.fuzz --minutes 10
    .venv/bin/python -m tests.fuzz --minutes 60 --seed 1234 --keep-going

One long-lived worker takes the well-framed cases (batches of hostile
payloads, a wrong type at each envelope field, envelopes cut at every byte);
fresh workers take whole streams that may end them (lying lengths, junk,
desync). Rounds alternate until the time is up; every failure is reported
with hypothesis' smallest example and the worker's stderr. At the end the
long-lived worker gets end of input and must have answered every frame it was
ever sent, then exit 0. Prints a tally (cases, frames, replies, workers,
crashes, outcomes) and exits 1 if anything failed. Not part of CI.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.support import fuzzing as fz

FORMATS = st.sampled_from(["json", "msgpack"])


def properties(harness: fz.Harness, stderr_dir: str) -> dict:
    """name -> (test function taking no arguments, examples per round)."""

    @given(st.lists(fz.payloads(), min_size=1, max_size=4))
    def batches(batch):
        harness.check(batch)

    @given(FORMATS, st.data())
    def wrong_field(fmt, data):
        fz.check_wrong_field(harness, fmt, *data.draw(fz.wrong_field(fmt)))

    @given(FORMATS, st.data())
    def cuts(fmt, data):
        fz.check_cuts(harness, fmt, data.draw)

    @given(fz.streams())
    def streams(stream):
        fz.run_stream(stream, stderr_path=os.path.join(stderr_dir, "stream.stderr"), tally=harness.tally)

    return {"batches": (batches, 200), "wrong_field": (wrong_field, 100), "cuts": (cuts, 20),
            "streams": (streams, 15)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed of the first round")
    parser.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    ns = parser.parse_args(argv)
    stderr_dir = tempfile.mkdtemp(prefix="portbridge-soak-")
    harness = fz.Harness(stderr_dir=stderr_dir)
    failures: list[str] = []
    started = time.monotonic()
    deadline = started + ns.minutes * 60
    rounds = 0
    print(f"soak: {ns.minutes} min, worker stderr in {stderr_dir}", flush=True)
    while time.monotonic() < deadline and (ns.keep_going or not failures):
        rounds += 1
        for name, (test, examples) in properties(harness, stderr_dir).items():  # fresh: settings apply once
            if time.monotonic() >= deadline:
                break
            run = settings(max_examples=examples, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck), print_blob=True)(test)
            if ns.seed is not None:
                run = seed(ns.seed + rounds)(run)
            try:
                run()
            except Exception as exc:  # a property failed: hypothesis already shrank and printed it
                failures.append(f"round {rounds}, {name}: {type(exc).__name__}: {str(exc)[:2000]}")
                traceback.print_exc()
                if not ns.keep_going:
                    break
        print(f"[{time.monotonic() - started:7.0f} s] round {rounds}: {harness.tally.line()}", flush=True)
    try:
        harness.close()
    except AssertionError as exc:
        failures.append(f"end of input: {exc}")
    tally = harness.tally
    print("\n== soak result")
    print(f"time {time.monotonic() - started:.0f} s, rounds {rounds}")
    print(tally.line())
    print("outcomes:", dict(tally.codes.most_common()))
    for why, code, tail in tally.crashes:
        print(f"crash: {why} (exit {code})\n{tail[-1500:]}")
    for failure in failures:
        print("FAILURE:", failure)
    print("PASS" if not failures else f"FAIL: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
