"""The in-process side of the pipeline scenarios: the hand-written ``dspy.Module``, no frames.

A child process that reads one instruction per line on stdin and answers one
JSON line on stdout:

    cpu STEPS N                 -> CPU ns of this process for N sequential calls (offline LM);
                                   STEPS 0: the single Predict program, not a module of steps
    threads URL MODEL STEPS T N -> wall ns of N calls on T threads (loopback LM at URL)

The module is what a user writes for the chain the scenarios declare as a
pipeline (``benchmarks/scenarios/pipeline.py``): ``step0`` answers the
question, each next step gets the question and the previous answer as its
draft. Calls run under the settings the worker's ``execute_program`` uses
(ChatAdapter, no history, no trace, usage tracked), so the difference with
the worker is the bridge.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

import dspy  # noqa: E402

from bridge.backends.dspy.offline import make_lm  # noqa: E402


class Chain(dspy.Module):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.step0 = dspy.Predict("question -> answer")
        for i in range(1, steps):
            setattr(self, f"step{i}", dspy.Predict("question, draft -> answer"))
        self.steps = steps

    def forward(self, question):
        answer = self.step0(question=question).answer
        for i in range(1, self.steps):
            answer = getattr(self, f"step{i}")(question=question, draft=answer).answer
        return dspy.Prediction(answer=answer)


def program(steps: int):
    return dspy.Predict("question -> answer") if steps == 0 else Chain(steps)


def call(module, lm, i: int) -> None:
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(), disable_history=True, trace=None,
                      warn_on_type_mismatch=False), dspy.track_usage() as tracker:
        module(question=f"question number {i}?").answer
        dict(tracker.usage_data)


def cpu(steps: int, n: int, lm) -> int:
    module = program(steps)
    t0 = time.process_time_ns()
    for i in range(n):
        call(module, lm, i)
    return time.process_time_ns() - t0


def threaded(url: str, model: str, steps: int, threads: int, n: int) -> int:
    lm = dspy.LM(model, api_base=url, api_key="bench-key", cache=False, num_retries=0)
    module = program(steps)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter_ns()
        list(pool.map(lambda i: call(module, lm, i), range(n)))
        return time.perf_counter_ns() - t0


def main() -> int:
    offline = make_lm()
    for line in sys.stdin:
        parts = line.split()
        if parts[0] == "cpu":
            answer = cpu(int(parts[1]), int(parts[2]), offline)
        else:
            answer = threaded(parts[1], parts[2], int(parts[3]), int(parts[4]), int(parts[5]))
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
