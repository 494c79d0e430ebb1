"""The in-process side of scenario 6: the same DSPy program called directly, no frames.

A child process that reads one instruction per line on stdin and answers one
JSON line on stdout:

    offline N            -> [ns, ...]  N calls with the built-in offline LM
    loopback URL N       -> [ns, ...]  N calls with the loopback server at URL
    threads URL MODEL T N -> ns        N calls on T threads (plain DSPy: a model name
                                       DSPy does not list is looked up in full every call)

The program is what the worker builds for ``create_program {"signature":
"question -> answer"}``: ``dspy.Predict``, called under the settings the
worker's ``execute_program`` uses (ChatAdapter, no history, no trace, usage
tracked), so the difference with the worker is the bridge.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

import dspy  # noqa: E402

from bridge.backends.dspy.offline import make_lm  # noqa: E402


def lm_for(kind: str, url: str | None):
    if kind == "offline":
        return make_lm()
    return dspy.LM("openai/bench", api_base=url, api_key="bench-key", cache=False, num_retries=0)


def calls(lm, n: int) -> list[int]:
    program = dspy.Predict("question -> answer")
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter(), disable_history=True, trace=None,
                          warn_on_type_mismatch=False), dspy.track_usage() as tracker:
            prediction = program(question=f"question number {i}?")
            prediction.answer, dict(tracker.usage_data)
        out.append(time.perf_counter_ns() - t0)
    return out


def threaded(url: str, model: str, threads: int, n: int) -> int:
    """``n`` calls shared by ``threads`` threads, each under the worker's settings; wall nanoseconds."""
    import concurrent.futures

    lm = dspy.LM(model, api_base=url, api_key="bench-key", cache=False, num_retries=0)
    program = dspy.Predict("question -> answer")

    def one(i: int) -> None:
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter(), disable_history=True, trace=None,
                          warn_on_type_mismatch=False), dspy.track_usage():
            program(question=f"question number {i}?").answer

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter_ns()
        list(pool.map(one, range(n)))
        return time.perf_counter_ns() - t0


def main() -> int:
    lms = {}
    for line in sys.stdin:
        parts = line.split()
        if parts[0] == "threads":
            print(json.dumps(threaded(parts[1], parts[2], int(parts[3]), int(parts[4]))), flush=True)
            continue
        kind, n = parts[0], int(parts[-1])
        url = parts[1] if kind == "loopback" else None
        lm = lms.setdefault((kind, url), lm_for(kind, url))
        print(json.dumps(calls(lm, n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
