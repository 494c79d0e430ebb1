"""``optimize_program``: DSPy's optimisers driven by data (imported after the gate).

Each optimiser in ``catalog.OPTIMIZERS`` is DSPy's own class, built from the
request's ``options`` (checked per optimiser: an option another optimiser
takes is a validation error, not silently ignored) and compiled on a copy of
the program in this request's DSPy context: the scope's LM (also as prompt
model and, for GEPA, as reflection LM unless ``options.reflection_lm``
configures another one, exactly as ``configure_lm`` does), the program's
adapter, and the ``Guard`` callback, which stops the run before its next LM
call once the request is cancelled or past its deadline, and sends
``progress`` events (LM calls, evaluations, last score). BootstrapFewShot
also reports after every example. The optimised program replaces the
original, or is saved beside it under ``save_as``; it exports and imports
like any program (instructions and demos per predictor).
"""

from __future__ import annotations

import time

import dspy
from dspy import teleprompt

from ...errors import validation_error
from . import build, lms, scoring
from .catalog import OPTIMIZERS
from .running import Guard, call_context, callback_of, program_errors, scope_indexes, tracked
from .state import Program, Scope


class _Reporting(teleprompt.BootstrapFewShot):
    """BootstrapFewShot that reports after every example."""

    def __init__(self, report, **kwargs) -> None:
        super().__init__(**kwargs)
        self._report = report
        self.done = 0
        self.accepted = 0

    def _bootstrap_one_example(self, example, round_idx=0):
        accepted = super()._bootstrap_one_example(example, round_idx)
        self.done += 1
        self.accepted += bool(accepted)
        self._report(self)
        return accepted


def check_options(name: str, options: dict) -> None:
    allowed = OPTIMIZERS[name]["options"]
    wrong = sorted(set(options) - set(allowed))
    if wrong:
        raise validation_error("option_not_applicable", f"args.options: {wrong} do not apply to {name} (it takes "
                               f"{sorted(allowed)})", path="args.options", optimizer=name)


def _pick(options: dict, *keys: str, **renamed: str) -> dict:
    picked = {k: options[k] for k in keys if k in options}
    picked.update({theirs: options[ours] for ours, theirs in renamed.items() if ours in options})
    return picked


def build_optimizer(name: str, metric, options: dict, lm, reflection_lm, report):
    """DSPy's optimiser object, and the keyword arguments of its ``compile`` besides student and trainset."""
    threshold = options.get("metric_threshold")
    if name == "LabeledFewShot":
        return teleprompt.LabeledFewShot(k=options.get("k", 16)), {}
    if name == "BootstrapFewShot":
        return _Reporting(report, metric=metric, metric_threshold=threshold if threshold is not None
                          else metric.threshold, max_bootstrapped_demos=options.get("max_bootstrapped_demos", 4),
                          max_labeled_demos=options.get("max_labeled_demos", 16),
                          max_rounds=options.get("max_rounds", 1), max_errors=options.get("max_errors", 10)), {}
    if name == "BootstrapFewShotWithRandomSearch":
        return teleprompt.BootstrapFewShotWithRandomSearch(
            metric=metric, metric_threshold=threshold, **_pick(
                options, "max_bootstrapped_demos", "max_labeled_demos", "max_rounds", "num_candidate_programs",
                "num_threads", "max_errors", "stop_at_score")), {}
    if name == "MIPROv2":
        auto = options.get("auto", "light")
        kwargs = _pick(options, "max_bootstrapped_demos", "max_labeled_demos", "num_candidates", "num_threads",
                       "max_errors", "seed", "init_temperature", "metric_threshold")
        compile_kwargs = _pick(options, "num_trials", "minibatch", "minibatch_size")
        return teleprompt.MIPROv2(metric=metric, prompt_model=lm, task_model=lm, auto=auto, verbose=False,
                                  track_stats=False, **kwargs), compile_kwargs
    if name == "COPRO":
        return teleprompt.COPRO(prompt_model=lm, metric=metric, **_pick(options, "breadth", "depth",
                                                                      "init_temperature")), \
            {"eval_kwargs": _pick(options, "num_threads")}
    if name == "SIMBA":
        return teleprompt.SIMBA(metric=metric, prompt_model=lm, **_pick(
            options, "bsize", "num_candidates", "max_steps", "max_demos", "num_threads")), \
            _pick(options, "seed")
    if name == "GEPA":
        budget = _pick(options, "auto", "max_metric_calls", "max_full_evals")
        return teleprompt.GEPA(metric=metric, reflection_lm=reflection_lm, **(budget or {"auto": "light"}), **_pick(
            options, "reflection_minibatch_size", "candidate_selection_strategy", "component_selector", "use_merge",
            "num_threads", "seed")), {}
    raise AssertionError(name)  # the schema allows only the names above


# DSPy 3.4.1's MIPROv2: how it sizes its valset, and the minibatch it draws from it.
MIPRO_VALSET_SHARE = 0.8  # of the trainset, when no valset is given (at least 1, at most 1000)
MIPRO_AUTO_VALSET = {"light": 100, "medium": 300, "heavy": 1000}  # auto runs cap the valset at this
MIPRO_AUTO_MINIBATCH_ABOVE = 50  # auto runs use minibatches only for a valset larger than this
MIPRO_MINIBATCH_SIZE = 35  # compile's default minibatch_size
SIMBA_BSIZE = 32  # SIMBA's default bsize


def check_settings(name: str, options: dict, trainset: int, valset: int | None) -> None:
    """Options that cannot work together, or with sets of these sizes: ``validation`` before any LM call.

    DSPy finds these only mid-run (MIPROv2: "Minibatch size cannot exceed the
    size of the valset"; SIMBA: an assertion), after LM calls were paid for.
    """
    if name == "MIPROv2":
        _check_mipro(options, trainset, valset)
    if name == "SIMBA":
        bsize = options.get("bsize", SIMBA_BSIZE)
        if bsize > trainset:
            default = "" if "bsize" in options else " (SIMBA's default)"
            _refuse(f"SIMBA's bsize {bsize}{default} exceeds the trainset of {trainset} examples: it samples "
                    f"minibatches of bsize examples from it; pass bsize of at most {trainset}, or more examples",
                    option="bsize", bsize=bsize, trainset=trainset)
    if name == "GEPA" and len({"auto", "max_metric_calls", "max_full_evals"} & set(options)) > 1:
        _refuse("GEPA takes one of auto, max_metric_calls, max_full_evals")


def _check_mipro(options: dict, trainset: int, valset: int | None) -> None:
    auto = options.get("auto", "light")
    explicit = sorted({"num_trials", "num_candidates"} & set(options))
    if auto is None and len(explicit) < 2:
        _refuse("MIPROv2 with auto: null needs num_trials and num_candidates", option="auto")
    if auto is not None and explicit:
        _refuse(f"MIPROv2 with auto: {auto!r} sets {explicit} itself; pass auto: null to set them",
                option=explicit[0])
    if valset is None and trainset < 2:
        _refuse(f"MIPROv2 without a valset needs at least 2 examples in the trainset, got {trainset}: it keeps "
                f"{int(MIPRO_VALSET_SHARE * 100)}% of them to validate on", option="trainset", trainset=trainset)
    given = valset is not None
    size = valset if given else min(1000, max(1, int(trainset * MIPRO_VALSET_SHARE)))
    if auto is not None:
        size = min(size, MIPRO_AUTO_VALSET[auto])
        minibatch = size > MIPRO_AUTO_MINIBATCH_ABOVE
    else:
        minibatch = options.get("minibatch", True)
    batch = options.get("minibatch_size", MIPRO_MINIBATCH_SIZE)
    if minibatch and batch > size:
        default = "" if "minibatch_size" in options else " (MIPROv2's default)"
        where = f"the valset of {size} examples" if given else \
            f"the valset of {size} examples ({int(MIPRO_VALSET_SHARE * 100)}% of the {trainset}-example trainset, " \
            "as MIPROv2 splits it when no valset is given)"
        _refuse(f"MIPROv2's minibatch_size {batch}{default} exceeds {where}; pass minibatch: false, a "
                f"minibatch_size of at most {size}, or more examples", option="minibatch_size",
                minibatch_size=batch, valset=size, trainset=trainset)


def _refuse(message: str, **details) -> None:
    raise validation_error("bad_options", f"args.options: {message}", path="args.options", **details)


def run(ctx, scope: Scope, global_scope: Scope, program: Program, args: dict) -> dict:
    name, options = args["optimizer"], args["options"]
    check_options(name, options)
    check_settings(name, options, len(args["trainset"]), len(args["valset"]) if args.get("valset") else None)
    examples = build.examples(dspy, program, args["trainset"], "args.trainset")
    valset = build.examples(dspy, program, args["valset"], "args.valset") if args.get("valset") else None
    fields = args.get("metric_fields")
    outputs = program.output_names()
    unknown = sorted(set(fields or ()) - set(outputs)) if outputs is not None else []
    if unknown:
        raise validation_error("unknown_output", f"args.metric_fields: unknown output(s) {unknown}",
                               path="args.metric_fields")
    uses_lm = name != "LabeledFewShot"
    metric = scoring.resolve(dspy, args["metric"], fields, program, feedback=name == "GEPA")
    config = lms.resolve(scope, global_scope) if uses_lm else None
    lm = lms.for_deadline(config, ctx.remaining()) if config else None
    reflection_lm = None
    if name == "GEPA":
        reflection = options.get("reflection_lm")
        reflection_lm = lms.build(dspy, {"cache": False, **reflection}).lm if reflection else lm
    total = len(examples)
    started = time.perf_counter()
    progress = {"optimizer": name, "done": 0, "total": total}

    def report(optimizer: _Reporting) -> None:
        ctx.check()
        ctx.emit("progress", {**progress, "done": optimizer.done, "bootstrapped": optimizer.accepted,
                              "errors": optimizer.error_count})

    def activity(counters: dict) -> dict:
        return {**progress, **counters, "elapsed_s": round(time.perf_counter() - started, 3)}

    optimizer, compile_kwargs = build_optimizer(name, metric, options, lm, reflection_lm, report)
    student = program.module.deepcopy()
    student._compiled = False  # an optimised program may be optimised again
    if valset is not None and name in ("BootstrapFewShotWithRandomSearch", "MIPROv2", "GEPA"):
        compile_kwargs["valset"] = valset
    usage: dict = {}
    ctx.emit("progress", progress)
    if uses_lm:
        with call_context(dspy, lm, build.adapter(dspy, program.adapter, lm), Guard(ctx, activity),
                          scope_indexes(scope, global_scope), callback_of(ctx), program_id=program.program_id,
                          context=program.context_for(ctx)), \
                tracked(dspy, scope, usage), program_errors(dspy):
            compiled = optimizer.compile(student, trainset=examples, **compile_kwargs)
    else:
        compiled = optimizer.compile(student, trainset=examples)
    ctx.check()
    target = args.get("save_as") or program.program_id
    record = {"optimizer": name, "metric": metric.__name__ if uses_lm else None, "trainset": total,
              "at": round(time.time(), 3)}
    optimized = program.derive(target, compiled, [*program.optimizations, record][-100:])
    scope.put(optimized, replace=target == program.program_id or args["replace"])
    demos = optimized.demo_count()
    ctx.emit("progress", {**progress, "done": total, "demos": demos})
    return {
        "program_id": target,
        "source_program_id": program.program_id,
        "replaced": target == program.program_id,
        "optimizer": name,
        "demos": demos,
        "bootstrapped": getattr(optimizer, "accepted", 0),
        "instructions": {n: p.signature.instructions for n, p in optimized.predictors()},
        "trainset": total,
        "usage": usage,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
