"""What the DSPy backend can build and run, as plain data (for schemas and ``describe``).

Only modules fully described by data (a signature and nothing else) can be
built; ``NOT_BUILDABLE`` says why each other DSPy module is left out.
"""

from __future__ import annotations

MODULES = {
    "Predict": "one LM call from the inputs to the outputs",
    "ChainOfThought": "like Predict, with a 'reasoning' output the LM writes before the answer",
}
NOT_BUILDABLE = {
    "ReAct": "needs tools, which are Python callables",
    "BestOfN": "needs a reward function, which is Python code",
    "Refine": "needs a reward function, which is Python code",
    "MultiChainComparison": "needs earlier completions passed in at call time, not a signature alone",
    "ProgramOfThought": "runs LM-written code (needs Deno or an unsandboxed interpreter) and is deprecated",
    "CodeAct": "runs LM-written code and needs Python tools",
}
OPTIMIZERS = {
    "LabeledFewShot": "samples up to k labelled demos from the trainset (options: k); no LM calls",
    "BootstrapFewShot": "runs the program on the trainset and keeps the runs the metric accepts as demos, "
                        "topped up with labelled ones (options: max_bootstrapped_demos, max_labeled_demos, "
                        "max_rounds, max_errors, metric_threshold); one LM call per example and round",
}
MAX_TRAINSET = 1000
MAX_DEMOS = 128  # per predictor, in optimiser options and imported documents
